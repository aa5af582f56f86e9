"""NetFlow v9 / IPFIX templates compiled once into a fixed record layout.

A template becomes a numpy structured dtype that names only the fields the decoder maps to
flow columns (at their byte offsets; the other fields are skipped by the offsets). All data
sets of one template in a decode call are joined and viewed with this dtype at once, so the
cost per flow is a few numpy column extractions, not Python.

Variable-length fields (length 65535 in the template) cannot be part of a fixed layout: such
records are first *normalised* by a Python walk that keeps the fixed-length fields, turns a
packet section (IE 315, 104, 313: the only variable-length elements a flow column uses) into
a fixed slot of its length and first HEADER_BYTES bytes, and drops the other variable ones;
then they go through the same fixed layout.
"""

from __future__ import annotations

import numpy as np

from flows.decode import limits, metrics
from flows.decode.columns import strided_view
from flows.decode.elements import BYTEWISE, IE, REVERSED, SECTIONS
from flows.decode.forwarding import JUNIPER_CPID, JUNIPER_PEN
from flows.decode.frames import HEADER_BYTES

VARIABLE = 65535
REVERSE_PEN = 29305  # RFC 5103 biflow: reverse information elements use this enterprise number
SCOPE_PEN = -1  # NetFlow v9 scope fields: their type numbers are not information elements

# Information elements a flow column or the sampling/time logic reads (elements.IE, the one
# table). Enterprise-specific elements other than the RFC 5103 reverse ones and Juniper's
# commonPropertiesId are never mapped, so they are skipped safely.
MAPPED = frozenset(IE)
SLOT = 2 + HEADER_BYTES  # a normalised variable-length section: its length, then its bytes
_SKIP, _KEEP = -1, -2  # steps of a normalising plan: a variable-length field dropped / kept in a slot
_ZEROS = bytes(HEADER_BYTES)

Field = tuple[int, int, int]  # (information element, enterprise number or 0, length)


def _mapped(pen: int, ie: int) -> bool:
    return (pen == 0 and ie in MAPPED) or (pen == REVERSE_PEN and ie in REVERSED)


def _slot(pen: int, ie: int, length: int) -> bool:
    """Whether a field is a variable-length packet section kept in a normalised slot."""
    return length == VARIABLE and pen == 0 and ie in SECTIONS


class Template:
    """A compiled data or options template.

    `keys` maps (enterprise, element) to (dtype field name, length) for the first occurrence
    of each mapped element (a section slot's length is VARIABLE, its length field `<name>_len`);
    `cpid` names the 2-byte Juniper commonPropertiesId fields (every occurrence: each carries
    its own type). `record_len` is the record size for fixed-length templates (None when the
    template has variable-length fields); `fixed_len` the size of a normalised record;
    `min_len` the least bytes of a record on the wire.
    """

    __slots__ = ("version", "fields", "options", "varlen", "fixed_len", "record_len", "min_len",
                 "dtype", "keys", "cpid", "slots", "plan")

    def __init__(self, version: int, fields: tuple[Field, ...], options: bool = False) -> None:
        self.version = version
        self.fields = fields
        self.options = options
        self.varlen = any(length == VARIABLE for _, _, length in fields)
        self.slots = tuple(_slot(pen, ie, length) for ie, pen, length in fields)
        names, formats, offsets, keys, cpid, offset, wire = [], [], [], {}, [], 0, 0
        for index, (ie, pen, length) in enumerate(fields):
            name = f"f{index}"
            if self.slots[index]:
                if (pen, ie) not in keys:
                    names += [f"{name}_len", name]
                    formats += [">u2", ("u1", (HEADER_BYTES,))]
                    offsets += [offset, offset + 2]
                    keys[(pen, ie)] = (name, VARIABLE)
                offset += SLOT
                continue
            if length == VARIABLE:
                continue
            if pen == JUNIPER_PEN and ie == JUNIPER_CPID and length == 2:
                names.append(name)
                formats.append(">u2")
                offsets.append(offset)
                cpid.append(name)
            elif _mapped(pen, ie) and (pen, ie) not in keys and length > 0:
                names.append(name)
                offsets.append(offset)
                integer = length in (1, 2, 4, 8) and ie not in BYTEWISE
                formats.append(f">u{length}" if integer else ("u1", (length,)))
                keys[(pen, ie)] = (name, length)
            offset += length
            wire += length
        self.fixed_len = offset
        self.record_len = None if self.varlen else offset
        self.min_len = wire + sum(1 for *_, length in fields if length == VARIABLE)
        self.keys = keys
        self.cpid = tuple(cpid)
        self.plan = _plan(fields, self.slots)
        self.dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                               "itemsize": max(offset, 1)})

    def __reduce__(self):
        # Pickled (in the exporter's snapshot) as what it is compiled from: smaller, and a
        # snapshot taken before a change of the layout code is compiled anew on recovery.
        return Template, (self.version, self.fields, self.options)

    def __setstate__(self, state) -> None:
        # A snapshot from before __reduce__: slot values pickled as they were; compile anew.
        slots = state[1] if isinstance(state, tuple) else state
        self.__init__(slots["version"], slots["fields"], slots["options"])

    @property
    def valid(self) -> bool:
        """A template that can describe records: some fixed bytes (MIN_RECORD_LENGTH for data
        records), records under 64 KiB, at most MAX_TEMPLATE_FIELDS fields."""
        least = 1 if self.options else limits.MIN_RECORD_LENGTH
        variable = sum(1 for *_, length in self.fields if length == VARIABLE)
        # (a record of a packet section alone is one: Juniper and Cisco export sampled packets so)
        return ((least <= self.min_len - variable or any(self.slots)) and self.min_len < 65536
                and len(self.fields) <= limits.MAX_TEMPLATE_FIELDS and variable <= limits.MAX_VARIABLE_FIELDS)

    def records(self, body: bytes, most: int = limits.MAX_ROWS_PER_DATAGRAM) -> tuple[bytes, int]:
        """The set body as whole fixed-layout records and their count (trailing padding dropped),
        at most `most` of them (the rest counted as a limit hit)."""
        if self.varlen:
            return self._normalise(body, most)
        count = len(body) // self.record_len
        if count > most:
            metrics.error("limit")
            count = most
        size = count * self.record_len
        return (body if size == len(body) else body[:size]), count

    def _normalise(self, body: bytes, most: int) -> tuple[bytes, int]:
        """Walk variable-length records, keeping their fixed-length fields and section slots.

        The walk (Python, one record after the other: each starts where the previous ended)
        only finds where each step of `plan` lies; the bytes are then gathered with numpy.
        Each record must take MIN_RECORD_LENGTH bytes: a set of tiny records is cut there
        (counted), which bounds the walk's cost per datagram."""
        plan, end = self.plan, len(body)
        least = max(self.min_len, limits.MIN_RECORD_LENGTH)
        where: list[list[int]] = [[] for _ in plan]  # per step: each record's offset of it
        lengths: list[list[int]] = [[] for _ in plan]  # per variable step: each record's length
        count = offset = 0
        while end - offset >= least:
            if count >= most:
                metrics.error("limit")
                break
            begin = offset
            for index, step in enumerate(plan):
                if step > 0:
                    where[index].append(offset)
                    offset += step
                    continue
                if offset >= end:
                    offset = end + 1
                    break
                length = body[offset]
                offset += 1
                if length == 255 and offset + 2 <= end:  # RFC 7011 section 7: a 2-byte length follows
                    length = (body[offset] << 8) | body[offset + 1]
                    offset += 2
                where[index].append(offset)
                lengths[index].append(length)
                offset += length
            if offset > end:  # a record cut by the end of the set: not a record
                break
            if offset - begin < limits.MIN_RECORD_LENGTH:
                metrics.error("implausible")
                break
            count += 1
        return self._gather(body, plan, where, lengths, count), count

    def _gather(self, body: bytes, plan: tuple[int, ...], where: list[list[int]],
                lengths: list[list[int]], count: int) -> bytes:
        """The normalised records: each plan step's bytes of the `count` records, side by side."""
        if not count:
            return b""
        padded = body + _ZEROS  # a section's slot reads HEADER_BYTES whatever its length
        out = np.zeros((count, self.fixed_len), np.uint8)
        column = 0
        for index, step in enumerate(plan):
            if step == _SKIP:
                continue
            at = np.array(where[index][:count], np.int64)
            width = step if step > 0 else HEADER_BYTES
            data = strided_view(padded, f"V{width}")[at].view(np.uint8).reshape(count, width)
            if step > 0:
                out[:, column:column + step] = data
                column += step
                continue
            kept = np.minimum(np.array(lengths[index][:count], np.int64), HEADER_BYTES)
            out[:, column] = kept >> 8
            out[:, column + 1] = kept & 0xFF
            out[:, column + 2:column + SLOT] = np.where(np.arange(HEADER_BYTES) < kept[:, None], data, 0)
            column += SLOT
        return out.tobytes()

    def view(self, records: bytes) -> np.ndarray:
        return np.frombuffer(records, dtype=self.dtype)


def _plan(fields: tuple[Field, ...], slots: tuple[bool, ...]) -> tuple[int, ...]:
    """How _normalise walks a record: byte counts of runs of fixed fields, _SKIP, _KEEP."""
    plan: list[int] = []
    for (_, _, length), slot in zip(fields, slots):
        if length != VARIABLE:
            if plan and plan[-1] > 0:
                plan[-1] += length
            else:
                plan.append(length)
        else:
            plan.append(_KEEP if slot else _SKIP)
    return tuple(step for step in plan if step != 0)


def options_values(template: Template, records: bytes, count: int) -> list[dict[tuple[int, int], int]]:
    """Options records as dicts of (enterprise, element) → integer (options data is small)."""
    view = template.view(records)
    rows = []
    for i in range(count):
        row = {}
        for key, (name, _) in template.keys.items():
            value = view[name][i]
            row[key] = int.from_bytes(value.tobytes(), "big") if value.ndim else int(value)
        rows.append(row)
    return rows
