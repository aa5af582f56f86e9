"""Help for a person typing a filter (the console's editor, `/api/v0/filter/*`): validation with
the position of what is wrong, and what may come next at the cursor.

Pure functions over the filter text; the values a column may take (exporter names, AS names,
countries, ...) are looked up in the store by connectors/http, given the context found here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flows import api
from flows.filter import enum_values

# The filter grammar's tokens (flows/filter.py FILTER_GRAMMAR), for finding where the cursor is;
# an unterminated string is a value being typed.
_TOKEN = re.compile(r"""\s*(?:(?P<string>'[^'\n]*'?|"[^"\n]*"?)|(?P<op>!=|<>|<=|>=|=|<|>)|(?P<punct>[(),])
                        |(?P<number>[0-9]+)|(?P<word>[A-Za-z][A-Za-z0-9]*)|(?P<other>\S))""", re.VERBOSE)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "ILIKE"}
INT_OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "IN", "NOT IN")
TEXT_OPERATORS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
ADDRESS_OPERATORS = ("=", "!=", "IN", "NOT IN")
MAX_COMPLETIONS = 50


def validate(text: str) -> dict[str, Any]:
    """{"valid": true, "columns": [...]} or {"valid": false, "reason", "message", "position",
    "line", "column"} (position: character offset in `text`; line and column from 1)."""
    leading = len(text) - len(text.lstrip())
    try:
        parsed = api.parse_filter(text)
    except api.QueryError as err:
        position = leading + (err.position if err.position is not None else 0)
        if position >= len(text.rstrip()):  # what ends too soon is wrong at the very end
            position = len(text)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return {"valid": False, "reason": err.reason, "message": str(err), "position": position,
                "line": line, "column": column}
    return {"valid": True, "columns": sorted(parsed.columns)}


@dataclass
class Context:
    """What may come at the cursor: `kind` column, operator, value or connector; the column a
    value or an operator is for; the partial word typed, replaced from `start`."""

    kind: str
    prefix: str = ""
    start: int = 0
    column: str | None = None
    options: list[dict[str, str]] = field(default_factory=list)


def context(text: str, cursor: int | None = None) -> Context:
    """The completion context at `cursor` (default: the end of the text)."""
    cursor = len(text) if cursor is None else max(0, min(cursor, len(text)))
    tokens = [(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)) for m in _TOKEN.finditer(text[:cursor])
              if m.lastgroup]
    prefix, start = "", cursor
    if tokens and tokens[-1][2] + len(tokens[-1][1]) == cursor and tokens[-1][0] in ("word", "number", "string"):
        kind, prefix, start = tokens.pop()
        if kind == "string" and len(prefix) > 1 and prefix[-1] == prefix[0]:
            tokens.append((kind, prefix, start))  # a finished string: what follows it
            prefix, start = "", cursor
    previous = [(kind, value.upper() if kind == "word" and value.upper() in _KEYWORDS else value)
                for kind, value, _ in tokens]
    return _after(previous, prefix, start)


def _after(previous: list[tuple[str, str]], prefix: str, start: int) -> Context:
    if not previous:
        return Context("column", prefix, start)
    last_kind, last = previous[-1]
    if last == "NOT" and len(previous) > 1 and previous[-2][0] == "word" and previous[-2][1] not in _KEYWORDS:
        return Context("operator", prefix, start, column=previous[-2][1],  # Column NOT IN (...)
                       options=[{"label": "IN", "kind": "operator", "detail": ""}])
    if last in ("(", "AND", "OR", "NOT") and not _in_list(previous):
        return Context("column", prefix, start)
    if last_kind == "word" and last not in _KEYWORDS:
        return Context("operator", prefix, start, column=last)
    column = _list_column(previous) if _in_list(previous) else None
    if column is not None and last in ("(", ","):
        return Context("value", prefix, start, column=column)
    if last_kind == "op" or last in ("LIKE", "ILIKE"):
        return Context("value", prefix, start, column=_column_before(previous))
    return Context("connector", prefix, start)


def _in_list(previous: list[tuple[str, str]]) -> bool:
    """Whether the cursor is inside an IN ( ... ) list not yet closed."""
    return _list_column(previous) is not None


def _list_column(previous: list[tuple[str, str]]) -> str | None:
    depth = 0
    for index in range(len(previous) - 1, -1, -1):
        value = previous[index][1]
        if value == ")":
            depth += 1
        elif value == "(":
            if depth:
                depth -= 1
            elif index >= 2 and previous[index - 1][1] == "IN":
                back = index - 3 if previous[index - 2][1] == "NOT" else index - 2
                return previous[back][1] if back >= 0 and previous[back][0] == "word" else None
            else:
                return None
    return None


def _column_before(previous: list[tuple[str, str]]) -> str | None:
    if len(previous) >= 2 and previous[-2][0] == "word":
        return previous[-2][1]
    return None


def operators_for(column: str) -> tuple[str, ...]:
    kind = api.column_kind(column)
    return INT_OPERATORS if kind == "int" else ADDRESS_OPERATORS if kind == "ip" else TEXT_OPERATORS


def complete(ctx: Context, values: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """Completions for a context: columns, operators or connectors from the grammar; values
    from `values` ((value, description) found in the store for ctx.column), quoted as the
    column's kind needs."""
    lowered = ctx.prefix.lstrip("'\"").lower()
    if ctx.kind == "column":
        items = [{"label": name, "kind": "column", "detail": column.description}
                 for name, column in api.COLUMNS.items()] + [{"label": "NOT", "kind": "keyword", "detail": ""}]
    elif ctx.options:
        items = ctx.options
    elif ctx.kind == "operator":
        known = ctx.column in api.COLUMNS
        items = [{"label": op, "kind": "operator", "detail": ""} for op in (operators_for(ctx.column) if known else ())]
    elif ctx.kind == "value":
        # (the store matched the prefix, on the value or on its name: no filtering here)
        kind = api.column_kind(ctx.column) if ctx.column in api.COLUMNS else "string"
        if kind == "enum":
            values = [(member, "") for member in enum_members(ctx.column)
                      if member.lower().startswith(lowered)]
        labels = [(value if kind == "int" else quote(value), detail) for value, detail in values]
        return _answer(ctx, [{"label": label, "kind": "value", "detail": detail}
                             for label, detail in labels if label is not None])
    else:
        items = [{"label": word, "kind": "keyword", "detail": ""} for word in ("AND", "OR", ")")]
    return _answer(ctx, [item for item in items if item["label"].lower().startswith(lowered)])


def _answer(ctx: Context, matching: list[dict[str, str]]) -> dict[str, Any]:
    return {"context": ctx.kind, "column": ctx.column, "prefix": ctx.prefix, "from": ctx.start,
            "completions": matching[:MAX_COMPLETIONS]}


def quote(value: str) -> str | None:
    """A text value as the filter language writes it: in single quotes, in double quotes when it
    holds a single quote; None when it holds both (the language cannot write it)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def enum_members(column: str) -> list[str]:
    return enum_values(column)


# Where a column's values are looked up: the exporters table for names, the dictionaries for AS
# numbers and protocols (with their names), else the hourly table (aggregated columns) or the
# last hour of raw flows, most frequent first.
_EXPORTER_VALUES = {"ExporterName": "ExporterName", "InIfName": "IfName", "OutIfName": "IfName",
                    "InIfDescription": "IfDescription", "OutIfDescription": "IfDescription"}
MAX_VALUES = 20


def values_sql(column: str, database: str) -> str | None:
    """One query for the values of `column` starting with the {prefix:String} parameter
    (case-insensitive): rows of (value, description). None for a column of unknown name."""
    if column not in api.COLUMNS:
        return None
    match = "startsWith(lower(v), lower({prefix:String}))"
    if column in _EXPORTER_VALUES:
        source = _EXPORTER_VALUES[column]
        return (f"SELECT `{source}` AS v, '' AS d FROM `{database}`.`exporters` WHERE v != '' AND {match} "
                f"GROUP BY v ORDER BY v LIMIT {MAX_VALUES}")
    if column.endswith("AS") and api.COLUMNS[column].ch_type == "UInt32":
        return (f"SELECT toString(asn) AS v, name AS d FROM `{database}`.`asns_data` "
                f"WHERE {match} OR startsWith(lower(name), lower({{prefix:String}})) ORDER BY asn LIMIT {MAX_VALUES}")
    if column == "Proto":
        return (f"SELECT toString(proto) AS v, name AS d FROM `{database}`.`protocols_data` "
                f"WHERE {match} OR startsWith(lower(name), lower({{prefix:String}})) ORDER BY proto LIMIT {MAX_VALUES}")
    aggregated = api.COLUMNS[column].aggregated
    table, since = ("flows_1h0m0s", "INTERVAL 7 DAY") if aggregated else ("flows", "INTERVAL 1 HOUR")
    return (f"SELECT {api.column_sql(column)} AS v, '' AS d FROM `{database}`.`{table}` "
            f"WHERE TimeReceived > now() - {since} AND {match} GROUP BY v ORDER BY count() DESC LIMIT {MAX_VALUES}")
