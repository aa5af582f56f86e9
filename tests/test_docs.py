"""The documentation site builds without a warning, and its configuration reference is current."""

import os
import subprocess
import sys
from pathlib import Path

from flows.settings import reference_markdown

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- config-reference:start -->\n"
END = "<!-- config-reference:end -->"


def test_configuration_reference_is_in_sync() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    start = text.index(START) + len(START)
    end = text.index(END)
    assert text[start:end] == reference_markdown(), (
        "run `waxflow config reference` and paste it between the markers of docs/configuration.md")


def test_site_builds_strict(tmp_path: Path) -> None:
    # --strict turns every warning into a failure: a broken link or anchor, a page not in the nav.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").glob("*.md")}
    built = {p.parent.relative_to(tmp_path / "site") for p in (tmp_path / "site").glob("*/index.html")}
    assert pages - {Path("index")} <= built, pages - built
    assert (tmp_path / "site" / "console-home.png").exists()
