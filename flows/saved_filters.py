"""Saved filters as pure logic: what a saved filter may hold, the one row a write makes, the
queries that read them. connectors/http/saved_filters.py does the writing.

A saved filter is a name, a filter that parses, and a description. Writes are the one thing the
API may change in the store, and only in the saved_filters table: a validated row appended by a
fixed INSERT (a new version of the name, or its deletion mark). Nothing of the caller's text is
ever SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flows import api, ddl

MAX_SAVED = 500
MAX_DESCRIPTION = 500
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
COLUMNS = ("Name", "Filter", "Description", "Updated", "Deleted")


@dataclass(frozen=True)
class SavedFilter:
    name: str
    filter: str
    description: str = ""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or name != name.strip():
        raise api.QueryError("bad_name", "a saved filter's name is 1-64 letters, digits, spaces, '.', '_' or '-', "
                                         "starting with a letter or a digit")
    return name


def parse_saved(body: Any) -> SavedFilter:
    """A JSON body {"name", "filter", "description"?}: every field checked, the filter parsed
    with the filter language (so a saved filter always runs)."""
    if not isinstance(body, Mapping):
        raise api.QueryError("bad_request",
                             'the body is a JSON object {"name": ..., "filter": ..., "description": ...}')
    unknown = sorted(set(body) - {"name", "filter", "description"})
    if unknown:
        raise api.QueryError("unknown_field", f"unknown field(s): {', '.join(map(str, unknown))[:200]}")
    for key in ("name", "filter", "description"):
        if isinstance(body.get(key), str) and not _encodable(body[key]):
            raise api.QueryError("bad_text", f"{key} is not valid Unicode text (a lone surrogate)")
    name = check_name(body.get("name"))
    text, description = body.get("filter"), body.get("description", "")
    if not isinstance(text, str) or not text.strip():
        raise api.QueryError("bad_filter", "filter is the filter's text (not empty)")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise api.QueryError("bad_description", f"description is text of at most {MAX_DESCRIPTION} characters")
    api.parse_filter(text)  # raises QueryError with the position of what is wrong
    return SavedFilter(name, text.strip(), description.strip())


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def row(saved: SavedFilter, now: float, deleted: bool = False) -> list[Any]:
    """The row a write appends, in COLUMNS order."""
    return [saved.name, saved.filter, saved.description, datetime.fromtimestamp(now, UTC), int(deleted)]


def list_sql(database: str) -> str:
    """Every saved filter (the newest row of each name, deletions left out)."""
    return (f"SELECT Name, Filter, Description, toString(Updated) FROM `{database}`.`{ddl.SAVED_FILTERS}` FINAL "
            "WHERE Deleted = 0 ORDER BY Name")


def one_sql(database: str) -> str:
    return (f"SELECT Name, Filter, Description, toString(Updated) FROM `{database}`.`{ddl.SAVED_FILTERS}` FINAL "
            "WHERE Deleted = 0 AND Name = {name:String}")


def shape(rows: list[tuple[Any, ...]]) -> list[dict[str, str]]:
    return [{"name": name, "filter": text, "description": description, "updated": updated}
            for name, text, description, updated in rows]
