"""The layers stay sealed: flows/ is pure logic and imports neither connectors/ (I/O) nor
waxflow/ (the application shell), except in the two modules that wire a dataflow together."""

from __future__ import annotations

import ast
from pathlib import Path

FLOWS = Path(__file__).resolve().parent.parent / "flows"
WIRING = {"flows/inlet.py", "flows/outlet.py"}
OUTER = ("connectors", "waxflow")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in a module, at any depth (function-level ones too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layer_violations(root: Path = FLOWS) -> list[str]:
    violations = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root.parent).as_posix()
        if name in WIRING:
            continue
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in OUTER:
                violations.append(f"{name}:{line} imports {module}")
    return violations


def test_flows_imports_no_io_or_shell_outside_the_wiring() -> None:
    assert layer_violations() == []


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / "flows"
    package.mkdir()
    (package / "inlet.py").write_text("import connectors.udp\n")
    (package / "pure.py").write_text("def f():\n    from connectors.geoip import X\n    import waxflow\n")
    assert layer_violations(package) == ["flows/pure.py:2 imports connectors.geoip",
                                         "flows/pure.py:3 imports waxflow"]
