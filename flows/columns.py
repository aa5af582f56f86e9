"""The columns one may group or filter flows by, and how queries write them; the error every
query refusal raises. Pure: flows/schema.py is the one list of columns, this is its query view."""

from __future__ import annotations

from flows import schema


class QueryError(ValueError):
    """A request the API refuses; `reason` is a short fixed word, the message says what is wrong."""

    def __init__(self, reason: str, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.position = position  # in a filter: the character offset of what is wrong


# --- columns one may group or filter by --------------------------------------------------------

_EXCLUDED = {"TimeReceived", "TimeFlowStart", "TimeFlowEnd", "Bytes", "Packets"}


def queryable_columns() -> dict[str, schema.Column]:
    """Dimensions and filter columns: every scalar column but times and counters."""
    return {c.name: c for c in schema.COLUMNS
            if c.name not in _EXCLUDED and not c.ch_type.startswith("Array")}


COLUMNS = queryable_columns()
AGGREGATED_NAMES = frozenset(c.name for c in schema.AGGREGATED)
AS_COLUMNS = frozenset(c.name for c in schema.COLUMNS if c.name.endswith("AS") and c.ch_type == "UInt32")


def _kind(column: schema.Column) -> str:
    t = column.ch_type
    if t == "IPv6":
        return "ip"
    if t.startswith("Enum8"):
        return "enum"
    if t.startswith(("UInt", "Int")):
        return "int"
    return "string"


def column_kind(name: str) -> str:
    """How the filter language writes the column's values: int (a number), string or enum (quoted
    text), ip (a quoted address or subnet)."""
    return _kind(COLUMNS[name])


def column_sql(name: str) -> str:
    """A column as a display string (addresses without the IPv4-mapped prefix)."""
    kind = _kind(COLUMNS[name])
    if kind == "ip":
        return f"replaceRegexpOne(IPv6NumToString(`{name}`), '^::ffff:', '')"
    if COLUMNS[name].ch_type.startswith("FixedString"):
        return f"replaceAll(toString(`{name}`), '\\0', '')"
    return f"toString(`{name}`)"
