"""The code passes ruff with the project's rules (pyproject.toml [tool.ruff]): pyflakes,
pycodestyle, import order, bugbear, pyupgrade — run with the tests, so CI fails on a finding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run([str(ruff), "check", "--output-format", "concise", "flows", "connectors", "waxflow",
                           "tests", "bench", "bpf", "scripts"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
