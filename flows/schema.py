"""The flow columns: the one list that decoders, enrichment, DDL, migrations and dashboards use.

Names and ClickHouse types follow Akvorado's well-known columns so that queries and habits
carry over. Each column says how it travels on the hot path (its Arrow type) and whether the
aggregated tables (flows_1m0s, flows_5m0s, flows_1h0m0s) keep it. Aggregated tables keep the
dimensions an operator groups by over long ranges; addresses, ports and per-packet details
stay in the raw `flows` table only.

Arrow types are chosen so that ClickHouse converts them without a copy in Python:
IPv6 columns are 16-byte fixed binaries (IPv4 as ::ffff:a.b.c.d), DateTime is uint32 seconds,
Enum8 columns travel as their uint8 code, FixedString(2) as 2-byte binaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

BOUNDARIES = ("undefined", "external", "internal")
DIRECTIONS = ("undefined", "ingress", "egress")


def _enum8(values: tuple[str, ...]) -> str:
    return "Enum8(" + ", ".join(f"'{v}' = {i}" for i, v in enumerate(values)) + ")"


@dataclass(frozen=True)
class Column:
    """One flow column.

    `aggregated`: kept in the aggregated tables (as a grouping key there).
    `summed`: a counter, summed by the aggregated tables (Bytes, Packets).
    `alias`: a ClickHouse ALIAS expression; such a column is never produced by decoders.
    """

    name: str
    ch_type: str
    arrow_type: pa.DataType | None
    aggregated: bool = False
    summed: bool = False
    codec: str | None = None
    alias: str | None = None
    description: str = ""

    @property
    def stored(self) -> bool:
        return self.alias is None

    def ddl(self) -> str:
        """Column definition as it appears in CREATE TABLE / ALTER TABLE ADD COLUMN."""
        text = f"`{self.name}` {self.ch_type}"
        if self.alias:
            return f"{text} ALIAS {self.alias}"
        if self.codec:
            text += f" CODEC({self.codec})"
        return text


def _c(name, ch_type, arrow_type, desc, *, agg=False, summed=False, codec=None) -> Column:
    return Column(name, ch_type, arrow_type, agg, summed, codec, None, desc)


_STR = pa.string()
_LC = "LowCardinality(String)"
_IP = pa.binary(16)
_COUNTRY = pa.binary(2)


def _pair(template: str, ch_type: str, arrow_type: pa.DataType, desc: str, **kw) -> list[Column]:
    """Src/Dst or In/Out pairs share their type and description."""
    if "{io}" in template:
        sides = (("In", "input"), ("Out", "output"))
        return [_c(template.format(io=s), ch_type, arrow_type, f"{desc} ({w})", **kw) for s, w in sides]
    sides = (("Src", "source"), ("Dst", "destination"))
    return [_c(template.format(sd=s), ch_type, arrow_type, f"{desc} ({w})", **kw) for s, w in sides]


COLUMNS: tuple[Column, ...] = (
    _c("TimeReceived", "DateTime", pa.uint32(), "when the collector received the flow (seconds)",
       agg=True, codec="DoubleDelta, LZ4"),
    _c("SamplingRate", "UInt64", pa.uint64(), "1 out of N packets sampled; multiply Bytes/Packets by it",
       agg=True),
    _c("ExporterAddress", "IPv6", _IP, "address of the exporting device (IPv4-mapped for IPv4)", agg=True),
    _c("ExporterName", _LC, _STR, "exporter name (SNMP sysName, static metadata, or its address)", agg=True),
    _c("ExporterGroup", _LC, _STR, "exporter group from classification", agg=True),
    _c("ExporterRole", _LC, _STR, "exporter role from classification", agg=True),
    _c("ExporterSite", _LC, _STR, "exporter site from classification", agg=True),
    _c("ExporterRegion", _LC, _STR, "exporter region from classification", agg=True),
    _c("ExporterTenant", _LC, _STR, "exporter tenant from classification", agg=True),
    *_pair("{sd}Addr", "IPv6", _IP, "IP address"),
    *_pair("{sd}NetMask", "UInt8", pa.uint8(), "prefix length of the routed prefix"),
    *_pair("{sd}AS", "UInt32", pa.uint32(), "autonomous system number", agg=True),
    *_pair("{sd}NetName", _LC, _STR, "network name from the networks table", agg=True),
    *_pair("{sd}NetRole", _LC, _STR, "network role from the networks table", agg=True),
    *_pair("{sd}NetSite", _LC, _STR, "network site from the networks table", agg=True),
    *_pair("{sd}NetRegion", _LC, _STR, "network region from the networks table", agg=True),
    *_pair("{sd}NetTenant", _LC, _STR, "network tenant from the networks table", agg=True),
    *_pair("{sd}Country", "FixedString(2)", _COUNTRY, "ISO country code", agg=True),
    *_pair("{sd}GeoCity", _LC, _STR, "city from GeoIP", agg=True),
    *_pair("{sd}GeoState", _LC, _STR, "state or region from GeoIP", agg=True),
    _c("DstASPath", "Array(UInt32)", pa.list_(pa.uint32()), "AS path towards the destination"),
    *_pair("{io}IfIndex", "UInt32", pa.uint32(), "SNMP ifIndex of the interface"),
    *_pair("{io}IfName", _LC, _STR, "interface name", agg=True),
    *_pair("{io}IfDescription", _LC, _STR, "interface description (ifAlias)", agg=True),
    *_pair("{io}IfSpeed", "UInt32", pa.uint32(), "interface speed in Mbps", agg=True),
    *_pair("{io}IfConnectivity", _LC, _STR, "interface connectivity (transit, pni, ix, ...)", agg=True),
    *_pair("{io}IfProvider", _LC, _STR, "provider behind the interface", agg=True),
    *_pair("{io}IfBoundary", _enum8(BOUNDARIES), pa.uint8(), "whether the interface faces outside",
           agg=True),
    _c("EType", "UInt32", pa.uint32(), "Ethernet type (0x800 IPv4, 0x86dd IPv6)", agg=True),
    _c("Proto", "UInt32", pa.uint32(), "IP protocol number", agg=True),
    *_pair("{sd}Port", "UInt16", pa.uint16(), "transport port"),
    _c("Bytes", "UInt64", pa.uint64(), "bytes as exported (L3 length; multiply by SamplingRate)",
       summed=True),
    _c("Packets", "UInt64", pa.uint64(), "packets as exported (multiply by SamplingRate)", summed=True),
    _c("ForwardingStatus", "UInt32", pa.uint32(), "forwarding status (RFC 7270; 64+ dropped)", agg=True),
    _c("FlowDirection", _enum8(DIRECTIONS), pa.uint8(), "direction the exporter observed the flow",
       agg=True),
    _c("TCPFlags", "UInt16", pa.uint16(), "cumulative TCP flags"),
    _c("ICMPv4Type", "UInt8", pa.uint8(), "ICMPv4 type"),
    _c("ICMPv4Code", "UInt8", pa.uint8(), "ICMPv4 code"),
    _c("ICMPv6Type", "UInt8", pa.uint8(), "ICMPv6 type"),
    _c("ICMPv6Code", "UInt8", pa.uint8(), "ICMPv6 code"),
    *_pair("{sd}Vlan", "UInt16", pa.uint16(), "802.1Q VLAN id"),
    _c("NextHop", "IPv6", _IP, "IP next hop"),
    _c("MPLSLabels", "Array(UInt32)", pa.list_(pa.uint32()), "MPLS label stack (labels, top first)"),
    *_pair("{sd}MAC", "UInt64", pa.uint64(), "MAC address as a 48-bit integer"),
    _c("IPTos", "UInt8", pa.uint8(), "IP ToS / traffic class"),
    _c("IPTTL", "UInt8", pa.uint8(), "IP TTL / hop limit"),
    _c("IPv6FlowLabel", "UInt32", pa.uint32(), "IPv6 flow label (20 bits)"),
    _c("IPFragmentID", "UInt32", pa.uint32(), "IP fragment identification (IPv4 header, IPv6 fragment header)"),
    _c("IPFragmentOffset", "UInt16", pa.uint16(), "IP fragment offset, in units of 8 bytes"),
    _c("IngressVRFID", "UInt32", pa.uint32(), "VRF the flow entered (IPFIX ingressVRFID)", agg=True),
    _c("EgressVRFID", "UInt32", pa.uint32(), "VRF the flow left (IPFIX egressVRFID)", agg=True),
    *_pair("{sd}AddrNAT", "IPv6", _IP, "IP address after NAT"),
    *_pair("{sd}PortNAT", "UInt16", pa.uint16(), "transport port after NAPT"),
    _c("FirewallEvent", "UInt8", pa.uint8(),
       "firewall event (IPFIX firewallEvent, Cisco NSEL): 1 created, 2 deleted, 3 denied, 4 alert, 5 updated",
       agg=True),
    _c("SciTagsExperiment", "UInt16", pa.uint16(),
       "SciTags experiment id marked in the IPv6 flow label (research networks)", agg=True),
    _c("SciTagsActivity", "UInt8", pa.uint8(), "SciTags activity id marked in the IPv6 flow label", agg=True),
    _c("TimeFlowStart", "DateTime64(3)", pa.timestamp("ms"), "flow start as exported (ms)",
       codec="DoubleDelta, LZ4"),
    _c("TimeFlowEnd", "DateTime64(3)", pa.timestamp("ms"), "flow end as exported (ms)",
       codec="DoubleDelta, LZ4"),
    Column("PacketSize", "UInt64", None, aggregated=True,
           alias="intDiv(Bytes, Packets)", description="average packet size"),
)

BY_NAME: Mapping[str, Column] = {c.name: c for c in COLUMNS}
STORED: tuple[Column, ...] = tuple(c for c in COLUMNS if c.stored)
AGGREGATED: tuple[Column, ...] = tuple(c for c in COLUMNS if c.aggregated or c.summed)
DIMENSIONS: tuple[Column, ...] = tuple(c for c in COLUMNS if not c.summed)
"""Columns one can group or filter by (everything but the counters)."""

ARROW_SCHEMA: pa.Schema = pa.schema([pa.field(c.name, c.arrow_type, nullable=False) for c in STORED])


def interface_attributes() -> tuple[str, ...]:
    """Suffixes shared by In/Out interface columns (IfName, IfSpeed, ...), for the exporters table."""
    return tuple(c.name[2:] for c in STORED if c.name.startswith("InIf") and f"Out{c.name[2:]}" in BY_NAME)


def _default_array(column: Column, n: int) -> pa.Array:
    """A column of n default values (zero, empty string, empty list), built without a Python loop."""
    t = column.arrow_type
    if pa.types.is_string(t):
        return pa.StringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, np.int32)), pa.py_buffer(b""))
    if pa.types.is_list(t):
        offsets = pa.py_buffer(np.zeros(n + 1, np.int32))
        return pa.ListArray.from_buffers(t, n, [None, offsets], children=[pa.array([], t.value_type)])
    if pa.types.is_fixed_size_binary(t):
        return pa.FixedSizeBinaryArray.from_buffers(t, n, [None, pa.py_buffer(bytes(t.byte_width * n))])
    if pa.types.is_timestamp(t):
        return pa.array(np.zeros(n, np.int64), type=pa.int64()).view(t)
    return pa.array(np.zeros(n, t.to_pandas_dtype()), type=t)


def _as_arrow(column: Column, values: object) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if values.type == column.arrow_type else values.cast(column.arrow_type)
    if isinstance(values, np.ndarray) and pa.types.is_fixed_size_binary(column.arrow_type):
        width = column.arrow_type.byte_width
        raw = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
        return pa.FixedSizeBinaryArray.from_buffers(
            column.arrow_type, len(raw) // width, [None, pa.py_buffer(raw.tobytes())])
    return pa.array(values, type=column.arrow_type)


def make_batch(columns: Mapping[str, object], num_rows: int) -> pa.RecordBatch:
    """A RecordBatch in the flow schema from the columns given; the others get default values.

    Values may be Arrow arrays, numpy arrays (fixed binaries as (n, width) uint8 or `S16`
    arrays) or Python sequences. Unknown column names raise KeyError: a typo must not
    silently drop data.
    """
    unknown = set(columns) - {c.name for c in STORED}
    if unknown:
        raise KeyError(f"unknown flow columns: {sorted(unknown)}")
    arrays = []
    for column in STORED:
        values = columns.get(column.name)
        arrays.append(_default_array(column, num_rows) if values is None else _as_arrow(column, values))
    return pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA)


def empty_batch() -> pa.RecordBatch:
    return make_batch({}, 0)


def concat_batches(batches: Iterable[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch from several in the flow schema (empty input gives an empty batch)."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return empty_batch()
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches, schema=ARROW_SCHEMA).combine_chunks().to_batches()[0]
