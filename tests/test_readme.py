"""The README stays a short front page whose commands are CI's and whose links lead somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_ci_runs_the_readme_test_command() -> None:
    command = "./scripts/bootstrap.sh && .venv/bin/pytest"
    assert command in README.read_text()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_readme_is_at_most_250_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail to a page in docs/"


def test_readme_relative_links_resolve() -> None:
    # Relative targets as GitHub resolves them: from the repository root, anchors aside.
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [t.split("#", 1)[0] for t in targets if "://" not in t and not t.startswith("#")]
    assert local, "the README links to no page of docs/"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
