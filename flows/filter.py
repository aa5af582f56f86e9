"""The filter language (`SrcAS = 2906 AND InIfBoundary = 'external' AND NOT DstAddr = '10.0.0.0/8'`):
its grammar, and its translation into SQL with every value a bound query parameter, typed from
the column. Errors carry the character offset of what is wrong (the console marks it)."""

from __future__ import annotations

import functools
import ipaddress
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
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
            allowed = enum_values(name)
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

    def _comparison(self, column: Token, op: Token) -> tuple[str, str, str]:
        """(column, its kind, operator) once the column takes that operator."""
        name, kind = self._column(column)
        self.position = op.start_pos
        text = str(op).upper()
        if kind == "ip" and text not in ("=", "!=", "<>"):
            raise QueryError("bad_filter", f"filter: {name} compares with = or != only")
        if kind != "ip" and text not in (_INT_OPS if kind == "int" else _STRING_OPS):
            raise QueryError("bad_filter", f"filter: {name} does not take {text}")
        return name, kind, text

    @v_args(inline=True)
    def compare(self, column: Token, op: Token, value: Token) -> str:
        name, kind, op = self._comparison(column, op)
        if kind == "ip":
            return self._ip_condition(name, op, self._value(name, "string", value))
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
    transformer = _ToSQL()
    transformer.out.sql = _compile(text, transformer)
    return transformer.out


def arrow_filter(text: str) -> pc.Expression | None:
    """The same filter as an Arrow expression over flow batches (flows/schema.py's Arrow types),
    for filtering flows in the dataflow without a store; None when the filter is empty."""
    text = (text or "").strip()
    return _compile(text, _ToArrow()) if text else None


def _compile(text: str, transformer: _ToSQL) -> Any:
    if len(text) > MAX_FILTER_LENGTH:
        raise QueryError("bad_filter", f"filter: longer than {MAX_FILTER_LENGTH} characters")
    try:
        tree = _parser.parse(text)
        _check_depth(tree)
        return transformer.transform(tree)
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


class _ToArrow(_ToSQL):
    """The filter as a pyarrow.compute Expression: the same checks as the SQL (inherited), the
    values in each column's Arrow form (addresses as 16 bytes, enums as their codes, FixedString
    as bytes)."""

    def _arrow_value(self, name: str, kind: str, token: Token) -> Any:
        value = self._value(name, kind, token)
        column = COLUMNS[name]
        if kind == "enum":
            return enum_codes(name)[value]
        if column.ch_type.startswith("FixedString"):
            return pa.scalar(value.encode().ljust(column.arrow_type.byte_width, b"\0")[:column.arrow_type.byte_width],
                             column.arrow_type)
        return value

    def _arrow_ip(self, name: str, op: str, token: Token) -> pc.Expression:
        text = self._value(name, "string", token)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise QueryError("bad_filter", f"filter: {name} needs an address or a subnet, got {text!r}") from None
        lo, hi = (pa.scalar(ipaddress.IPv6Address(_mapped(a)).packed, pa.binary(16))
                  for a in (net.network_address, net.broadcast_address))
        inside = (pc.field(name) >= lo) & (pc.field(name) <= hi)
        return inside if op == "=" else ~inside

    @v_args(inline=True)
    def compare(self, column: Token, op: Token, value: Token) -> pc.Expression:
        name, kind, op = self._comparison(column, op)
        if kind == "ip":
            return self._arrow_ip(name, "=" if op == "=" else "!=", value)
        field_, literal = pc.field(name), self._arrow_value(name, kind, value)
        if op in ("LIKE", "ILIKE"):
            text = field_ if COLUMNS[name].arrow_type == pa.string() else field_.cast(pa.binary())
            return pc.match_like(text, literal if isinstance(literal, str) else literal.as_py().decode(),
                                 ignore_case=op == "ILIKE")
        return {"=": field_ == literal, "!=": field_ != literal, "<>": field_ != literal, "<": field_ < literal,
                "<=": field_ <= literal, ">": field_ > literal, ">=": field_ >= literal}[op]

    def _within(self, items: list, negate: bool) -> pc.Expression:
        column, *values = items
        name, kind = self._column(column)
        if len(values) > MAX_FILTER_VALUES:
            raise QueryError("bad_filter", f"filter: at most {MAX_FILTER_VALUES} values in a list")
        if kind == "ip":
            inside = functools.reduce(operator.or_, (self._arrow_ip(name, "=", v) for v in values))
        else:
            literals = [self._arrow_value(name, kind, v) for v in values]
            inside = pc.field(name).isin(pa.array([v.as_py() if isinstance(v, pa.Scalar) else v for v in literals],
                                                  COLUMNS[name].arrow_type))
        return ~inside if negate else inside

    def and_expr(self, items: list) -> pc.Expression:
        return functools.reduce(operator.and_, items)

    def or_expr(self, items: list) -> pc.Expression:
        return functools.reduce(operator.or_, items)

    @v_args(inline=True)
    def negate(self, item: pc.Expression) -> pc.Expression:
        return ~item


def enum_codes(name: str) -> dict[str, int]:
    """An Enum8 column's values and their codes (its Arrow form is the code)."""
    pairs = (item.rsplit("=", 1) for item in COLUMNS[name].ch_type[6:-1].split(","))
    return {label.strip().strip("'"): int(code) for label, code in pairs}


def enum_values(name: str) -> list[str]:
    return list(enum_codes(name))


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
