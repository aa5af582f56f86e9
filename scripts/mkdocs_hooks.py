"""MkDocs hooks for the documentation site (mkdocs.yml `hooks:`).

A `|` inside code in a Markdown table is written `\\|` so that GitHub keeps the cell whole;
GitHub then shows `|`, but Python-Markdown leaves the backslash in code spans. This removes it
from code in table cells only, so code blocks keep their text as written.
"""

import re

_CELL = re.compile(r"(<td[^>]*>)(.*?)(</td>)", re.S)
_CODE = re.compile(r"(<code>)(.*?)(</code>)", re.S)


def _unescape_code(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2).replace("\\|", "|") + match.group(3)


def _unescape_cell(match: re.Match[str]) -> str:
    return match.group(1) + _CODE.sub(_unescape_code, match.group(2)) + match.group(3)


def on_page_content(html: str, **_: object) -> str:
    return _CELL.sub(_unescape_cell, html)
