"""The filter language (`SrcAS = 2906 AND InIfBoundary = 'external' AND NOT DstAddr = '10.0.0.0/8'`):
its grammar, and its translation into SQL with every value a bound query parameter, typed from
the column. Errors carry the character offset of what is wrong (the console marks it)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import LarkError, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from flows.columns import COLUMNS, QueryError, column_kind

MAX_FILTER_LENGTH = 2000
MAX_FILTER_VALUES = 200
MAX_FILTER_DEPTH = 64  # nesting of NOT / parentheses; deeper would exhaust the transformer's stack
_ASCII_DIGITS = re.compile(r"[0-9]+")


FILTER_GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> negate
         | atom
?atom: comparison
     | "(" or_expr ")"
comparison: COLUMN OP value                          -> compare
          | COLUMN _IN "(" value ("," value)* ")"     -> within
          | COLUMN _NOT _IN "(" value ("," value)* ")" -> not_within
?value: NUMBER | STRING
OP.2: "!=" | "<>" | "<=" | ">=" | "=" | "<" | ">" | /like\b/i | /ilike\b/i
_AND.2: /and\b/i
_OR.2: /or\b/i
_NOT.2: /not\b/i
_IN.2: /in\b/i
COLUMN: /[A-Za-z][A-Za-z0-9]*/
NUMBER: /[0-9]+/
STRING: /'[^'\n]*'/ | /"[^"\n]*"/
%ignore /\s+/
"""

_parser = Lark(FILTER_GRAMMAR, parser="lalr")
_INT_OPS = {"=", "!=", "<>", "<", "<=", ">", ">="}
_STRING_OPS = {"=", "!=", "<>", "LIKE", "ILIKE"}


@dataclass
class Filter:
    """A parsed filter: SQL with placeholders, the bound values, and the columns it reads."""

    sql: str = "1"
    parameters: dict[str, Any] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)


class _ToSQL(Transformer):
    def __init__(self) -> None:
        super().__init__()
        self.out = Filter()
        self.position = 0  # where the token being checked starts (for error positions)

    def _param(self, kind: str, value: Any) -> str:
        name = f"f{len(self.out.parameters)}"
        self.out.parameters[name] = value
        return "{" + name + ":" + {"int": "UInt64", "ip": "String"}.get(kind, "String") + "}"

    def _column(self, token: Token) -> tuple[str, str]:
        self.position = token.start_pos
        name = str(token)
        if name not in COLUMNS:
            raise QueryError("unknown_column", f"filter: unknown column {name!r}")
        self.out.columns.add(name)
        return name, column_kind(name)

    def _value(self, name: str, kind: str, token: Token) -> Any:
        self.position = token.start_pos
        text = str(token)
        quoted = token.type == "STRING"
        if quoted:
            text = text[1:-1]
        if kind == "int":
            if quoted or not _ASCII_DIGITS.fullmatch(text) or int(text) >= 2**64:
                raise QueryError("bad_filter", f"filter: {name} needs a whole number, got {token!s}")
            return int(text)
        if not quoted:
            raise QueryError("bad_filter", f"filter: {name} needs a quoted value, got {token!s}")
        if kind == "enum":
            allowed = [v.split("'")[1] for v in COLUMNS[name].ch_type[6:-1].split(",")]
            if text not in allowed:
                raise QueryError("bad_filter", f"filter: {name} is one of {', '.join(allowed)}")
        return text

    def _ip_condition(self, name: str, op: str, text: str) -> str:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise QueryError("bad_filter", f"filter: {name} needs an address or a subnet, got {text!r}") from None
        if op not in ("=", "!=", "<>"):
            raise QueryError("bad_filter", f"filter: {name} compares with = or != only")
        lo, hi = _mapped(net.network_address), _mapped(net.broadcast_address)
        inside = (f"(`{name}` BETWEEN toIPv6({self._param('ip', lo)}) "
                  f"AND toIPv6({self._param('ip', hi)}))")
        return inside if op == "=" else f"NOT {inside}"

    @v_args(inline=True)
    def compare(self, column: Token, op: Token, value: Token) -> str:
        name, kind = self._column(column)
        self.position = op.start_pos
        op = str(op).upper()
        if kind == "ip":
            if op not in ("=", "!=", "<>"):
                raise QueryError("bad_filter", f"filter: {name} compares with = or != only")
            return self._ip_condition(name, op, self._value(name, "string", value))
        allowed = _INT_OPS if kind == "int" else _STRING_OPS
        if op not in allowed:
            raise QueryError("bad_filter", f"filter: {name} does not take {op}")
        return f"`{name}` {'!=' if op == '<>' else op} {self._param(kind, self._value(name, kind, value))}"

    def _within(self, items: list, negate: bool) -> str:
        column, *values = items
        name, kind = self._column(column)
        if len(values) > MAX_FILTER_VALUES:
            raise QueryError("bad_filter", f"filter: at most {MAX_FILTER_VALUES} values in a list")
        if kind == "ip":
            parts = [self._ip_condition(name, "=", self._value(name, "string", v)) for v in values]
            joined = "(" + " OR ".join(parts) + ")"
            return f"NOT {joined}" if negate else joined
        placeholders = ", ".join(self._param(kind, self._value(name, kind, v)) for v in values)
        return f"`{name}` {'NOT IN' if negate else 'IN'} ({placeholders})"

    def within(self, items: list) -> str:
        return self._within(items, False)

    def not_within(self, items: list) -> str:
        return self._within(items, True)

    def and_expr(self, items: list) -> str:
        return "(" + " AND ".join(items) + ")"

    def or_expr(self, items: list) -> str:
        return "(" + " OR ".join(items) + ")"

    @v_args(inline=True)
    def negate(self, item: str) -> str:
        return f"NOT ({item})"


def _mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"::ffff:{address}" if address.version == 4 else str(address)


def _check_depth(tree: Tree) -> None:
    """Refuse filters nested deeper than MAX_FILTER_DEPTH (walked without recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise QueryError("bad_filter", f"filter: nested deeper than {MAX_FILTER_DEPTH} levels")
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def parse_filter(text: str) -> Filter:
    """`SrcAS = 2906 AND InIfBoundary = 'external' AND NOT DstAddr = '10.0.0.0/8'` → SQL + values."""
    text = (text or "").strip()
    if not text:
        return Filter()
    if len(text) > MAX_FILTER_LENGTH:
        raise QueryError("bad_filter", f"filter: longer than {MAX_FILTER_LENGTH} characters")
    try:
        tree = _parser.parse(text)
        _check_depth(tree)
        transformer = _ToSQL()
        sql = transformer.transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, QueryError):
            if err.orig_exc.position is None:
                err.orig_exc.position = transformer.position
            raise err.orig_exc from None
        raise
    except UnexpectedInput as err:
        raise QueryError("bad_filter", *_parse_error(err, text)) from None
    except LarkError as err:
        first = str(err).strip().splitlines()[0]
        raise QueryError("bad_filter", f"filter: cannot parse: {first}") from None
    transformer.out.sql = sql
    return transformer.out


def lex_filter(text: str) -> Iterator[Token]:
    """The filter's tokens (COLUMN, OP, STRING, ...) with their positions, by the grammar's lexer."""
    try:
        yield from _parser.lex(text)
    except UnexpectedInput as err:
        raise QueryError("bad_filter", *_parse_error(err, text)) from None


def _parse_error(err: UnexpectedInput, text: str) -> tuple[str, int]:
    """A parse error's message and character offset, worded for a person typing a filter."""
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        return "filter: it ends too soon (a value, a column or a closing parenthesis is missing)", len(text)
    if isinstance(err, UnexpectedToken):
        return f"filter: {str(err.token)!r} is not expected here", err.token.start_pos
    position = getattr(err, "pos_in_stream", None) or 0
    return f"filter: {text[position:position + 1]!r} is not expected here", position
