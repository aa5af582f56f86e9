"""The guard on SQL from API users, as pure logic over what ClickHouse's own parser says, and
the limits of the sessions API queries run on.

The text is never concatenated into anything of ours. connectors/http/queries.py asks the store
to parse it twice, with the text only ever travelling as a bound parameter or verbatim:

1. `SELECT formatQuery({sql:String})`: ClickHouse's parser refuses anything that is not exactly
   one statement (so `SELECT 1; DROP TABLE t` never reaches execution) and answers the canonical
   text, without comments, of that one statement. check_canonical() wants a SELECT there.
2. `EXPLAIN AST <canonical>`: the tree of that one statement (parsing only, nothing runs, an
   `INTO OUTFILE` writes nothing). check_ast() wants a plain SELECT / UNION / WITH query and no
   clause or function that reaches outside the database.

Only then does the canonical text run, on a session frozen by `SET readonly = 1` (no write, no
DDL, no SYSTEM, no SETTINGS). The tree check matters even so: with chDB, `INTO OUTFILE` is
written by the client, `KILL QUERY` and the scalar `file()` are not stopped by readonly=1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows.settings import Settings

MAX_SQL_BYTES = 64 * 1024


class GuardError(ValueError):
    """User SQL refused before it runs; `reason` is a fixed word for the API's answer."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Table functions that only compute over their arguments or the query itself. Every other one
# reads files, URLs, other servers, processes or other databases (file, url, remote, cluster,
# s3, mysql, executable, merge, dictionary, input, ...).
COMPUTING_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generateseries", "generate_series", "values",
    "null", "view", "format", "generaterandom", "primes"})
# Scalar functions that read outside the database (files, models, the server's configuration,
# disks, other databases' catalogue).
OUTSIDE_FUNCTIONS = frozenset({
    "file", "catboostevaluate", "naivebayesclassifier", "url", "s3", "hascolumnintable",
    "getserversetting", "getserverport", "globalvariable", "getmacro", "serveruuid", "tcpport",
    "filesystemavailable", "filesystemcapacity", "filesystemfree", "filesystemunreserved",
    "getclienthttpheader"})
# Functions whose cost on one row grows with the square of its strings' length: ClickHouse checks
# max_execution_time between blocks, so one block of them could hold a query slot for hours.
UNBOUNDED_FUNCTIONS = frozenset({
    "editdistance", "editdistanceutf8", "levenshteindistance", "levenshteindistanceutf8",
    "damerauLevenshteinDistance".lower(), "jarosimilarity", "jarowinklersimilarity",
    "stringjaccardindex", "stringjaccardindexutf8"})
# What formatQuery()'s canonical text of a query starts with.
_STATEMENT_STARTS = ("SELECT", "WITH", "(")


def check_text(sql: str) -> str:
    """Cheap refusals before the store sees the text at all."""
    if not sql.strip():
        raise GuardError("bad_request", "no SQL given")
    if len(sql.encode("utf-8", errors="surrogatepass")) > MAX_SQL_BYTES:
        raise GuardError("too_large", f"the SQL is longer than {MAX_SQL_BYTES} bytes")
    if "\0" in sql:
        raise GuardError("syntax_error", "the SQL holds a NUL character")
    return sql


def check_canonical(canonical: str) -> str:
    """formatQuery()'s answer must be one SELECT (or WITH … SELECT, or a parenthesised one)."""
    text = canonical.lstrip()
    if not text.upper().startswith(_STATEMENT_STARTS):
        first = text.split(None, 1)[0] if text else "nothing"
        raise GuardError("not_a_select", f"only one SELECT is allowed, not {first[:40]}")
    return text


@dataclass(frozen=True)
class Node:
    """One line of `EXPLAIN AST`: `Function numbers (children 1)` → kind Function, name numbers."""

    depth: int
    kind: str
    name: str
    parent: Node | None
    position: int  # its place among its parent's children, from 0


def parse_explain(lines: list[str]) -> list[Node]:
    """EXPLAIN AST lines → nodes with their parent; depth from the indentation (one space each)."""
    nodes: list[Node] = []
    stack: list[Node] = []
    counts: dict[int, int] = {}
    for line in lines:
        depth = len(line) - len(line.lstrip(" "))
        words = line.strip().split(" ", 1)
        kind = words[0]
        rest = words[1] if len(words) > 1 else ""
        name = _strip_suffixes(rest)
        del stack[depth:]
        parent = stack[-1] if stack else None
        key = id(parent)
        position = counts.get(key, 0)
        counts[key] = position + 1
        node = Node(depth, kind, name, parent, position)
        nodes.append(node)
        stack.append(node)
    return nodes


def _strip_suffixes(rest: str) -> str:
    """`system.tables (alias t) (children 1)` → `system.tables`."""
    for marker in (" (alias ", " (children ", "(alias ", "(children "):
        if marker in rest:
            rest = rest.split(marker, 1)[0]
    return rest.strip()


def _refuse_shape(message: str) -> GuardError:
    return GuardError("not_a_select", f"only one plain SELECT is allowed: {message}")


def _check_top(nodes: list[Node], client_format: str) -> None:
    if not nodes or nodes[0].kind != "SelectWithUnionQuery":
        raise _refuse_shape("not a SELECT")
    top = [n for n in nodes if n.parent is nodes[0]]
    lists = [n for n in top if n.kind == "ExpressionList"]
    # The client may add its own output format: that one Identifier and nothing else.
    formats = [n for n in top if n.kind == "Identifier" and n.name == client_format]
    if len(lists) != 1 or len(formats) > 1 or len(top) != len(lists) + len(formats):
        extra = [f"{n.kind} {n.name}".strip() for n in top if n not in lists and n not in formats]
        raise _refuse_shape("no INTO OUTFILE, FORMAT or SETTINGS clause"
                            + (f" (found {', '.join(extra)[:80]})" if extra else ""))


def _is_table_function(node: Node) -> bool:
    return node.kind == "Function" and node.parent is not None and node.parent.kind == "TableExpression"


def _table_database(name: str) -> str | None:
    """`db.table` → db; backquoted or plain; None when unqualified."""
    if "." not in name:
        return None
    return name.split(".", 1)[0].strip("`\"")


def check_ast(lines: list[str], database: str, client_format: str = "Native") -> None:
    """Refuse (GuardError) unless the tree is one SELECT over `database`'s tables and computing
    table functions, with no SETTINGS, output clause or function reaching outside."""
    nodes = parse_explain(lines)
    _check_top(nodes, client_format)
    for node in nodes:
        if node.kind in ("Set", "SetQuery"):
            raise GuardError("not_a_select", "SETTINGS are not allowed in API queries")
        if node.kind == "Function":
            name = node.name.lower()
            if _is_table_function(node) and name not in COMPUTING_TABLE_FUNCTIONS:
                raise GuardError("forbidden_function", f"table function {node.name}() reads outside the database")
            if name in OUTSIDE_FUNCTIONS:
                raise GuardError("forbidden_function", f"{node.name}() reads outside the database")
            if name in UNBOUNDED_FUNCTIONS:
                raise GuardError("forbidden_function", f"{node.name}() can run past the time limit "
                                                       "(its cost per row is not bounded)")
        if node.kind in ("TableIdentifier", "Identifier") and _names_table(node):
            db = _table_database(node.name)
            if db is not None and db != database:
                raise GuardError("forbidden_table", f"only tables of the {database!r} database can be read, "
                                                    f"not {node.name[:80]}")


def _names_table(node: Node) -> bool:
    """A table name: a TableIdentifier, or the right-hand side of IN / NOT IN (`x IN db.t`)."""
    if node.kind == "TableIdentifier":
        return True
    parent = node.parent
    if parent is None or parent.kind != "ExpressionList" or node.position != 1:
        return False
    grand = parent.parent
    return grand is not None and grand.kind == "Function" and grand.name.lower() in (
        "in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin", "globalnotnullin")


# --- limits of the sessions queries run on ----------------------------------------------------

def session_limits(settings: Settings, kind: str = "api") -> dict[str, Any]:
    """Limits of a session: `api` for flows/exporters, `user` for users' SQL (also a cap on the
    result's size: the query fails instead of building a huge answer), `probe` for /healthz."""
    limits: dict[str, Any] = {"max_execution_time": int(settings.api.query_timeout.total_seconds()),
                              "max_memory_usage": int(settings.api.max_memory)}
    if kind == "user":
        # Smaller blocks: a result arrives (and is decoded, holding the GIL) a block at a time,
        # and reading stops at the caps; 1024 rows cost little to aggregations (measured).
        limits |= {"max_result_bytes": int(settings.api.max_result), "result_overflow_mode": "throw",
                   "max_block_size": 1024}
    elif kind == "probe":
        limits |= {"max_execution_time": 2}
    return limits
