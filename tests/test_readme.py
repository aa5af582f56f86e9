"""The README's configuration reference is the one the settings model generates."""

from pathlib import Path

from flows.settings import reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_reference_is_in_sync() -> None:
    text = README.read_text()
    start = text.index("<!-- config-reference:start -->\n") + len("<!-- config-reference:start -->\n")
    end = text.index("<!-- config-reference:end -->")
    assert text[start:end] == reference_markdown(), "run `waxflow config reference` and update README.md"


def test_ci_runs_the_readme_test_command() -> None:
    command = "./scripts/bootstrap.sh && .venv/bin/pytest"
    assert command in README.read_text()
    assert command in (README.parent / ".ci" / "run").read_text()
