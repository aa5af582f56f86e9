"""`waxflow decode FILE.pcap`: decode the exporter datagrams of a capture and print the flows.

The troubleshooting tool of the decoders (like `nfdump -r`): every UDP payload of the capture
is decoded with the exporter taken from the frame's source address (state per exporter, so
templates learnt from earlier datagrams apply to later ones) and the capture time as the
receive time. IP fragments are not reassembled: capture with a large enough MTU.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import json
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import click
import pyarrow as pa

from flows import schema
from flows.decode import FlowDecoder, metrics
from flows.decode.frames import DECAPSULATIONS

CHUNK = 256
# Columns the decoders fill (enrichment columns stay empty here), in display order.
DECODED = (
    "TimeReceived", "TimeFlowStart", "TimeFlowEnd", "ExporterAddress", "SamplingRate",
    "InIfIndex", "OutIfIndex", "FlowDirection", "SrcAddr", "DstAddr", "SrcNetMask", "DstNetMask",
    "NextHop", "SrcAS", "DstAS", "DstASPath", "EType", "Proto", "SrcPort", "DstPort",
    "Bytes", "Packets", "TCPFlags", "ICMPv4Type", "ICMPv4Code", "ICMPv6Type", "ICMPv6Code",
    "IPTos", "IPTTL", "IPv6FlowLabel", "IPFragmentID", "IPFragmentOffset", "ForwardingStatus",
    "SrcVlan", "DstVlan", "MPLSLabels", "SrcMAC", "DstMAC", "IngressVRFID", "EgressVRFID",
    "SrcAddrNAT", "DstAddrNAT", "SrcPortNAT", "DstPortNAT", "FirewallEvent", "SciTagsExperiment",
    "SciTagsActivity",
)
TABLE = ("TimeFlowStart", "ExporterAddress", "SrcAddr", "SrcPort", "DstAddr", "DstPort", "Proto",
         "InIfIndex", "OutIfIndex", "Packets", "Bytes", "SamplingRate")
ADDRESSES = {"ExporterAddress", "SrcAddr", "DstAddr", "NextHop", "SrcAddrNAT", "DstAddrNAT"}


def pcap_datagrams(path: str) -> Iterator[tuple[bytes, str, float]]:
    """(UDP payload, source address, capture time) for every UDP datagram of a pcap or pcapng
    capture (Ethernet with VLAN tags, Linux cooked v1/v2, loopback or raw IP frames)."""
    import dpkt

    with open(path, "rb") as file:
        try:
            reader = dpkt.pcap.UniversalReader(file)
        except (ValueError, dpkt.Error) as err:
            raise click.ClickException(f"{path}: not a pcap or pcapng capture ({err})") from err
        frame_of = _frames().get(reader.datalink())
        if frame_of is None:
            raise click.ClickException(f"{path}: link type {reader.datalink()} is not one waxflow reads "
                                       "(Ethernet, Linux cooked, loopback, raw IP)")
        for when, frame in reader:
            try:
                network = _network(frame_of(frame))
            except dpkt.Error:  # a truncated or malformed frame: not an exporter datagram
                continue
            if network is not None and isinstance(network.data, dpkt.udp.UDP):
                yield bytes(network.data.data), _source(network), float(when)


def _raw_ip(frame: bytes):
    import dpkt

    return dpkt.ip6.IP6(frame) if frame[:1] and frame[0] >> 4 == 6 else dpkt.ip.IP(frame)


def _loopback(frame: bytes):
    return _raw_ip(frame[4:])  # a 4-byte address family in the host's byte order, then IP


@functools.cache
def _frames() -> dict:
    """Link type (pcap LINKTYPE_*) → the frame's parser (dpkt imported by the first read, not by
    `waxflow --help`)."""
    import dpkt
    import dpkt.sll2

    return {1: dpkt.ethernet.Ethernet, 113: dpkt.sll.SLL, 276: dpkt.sll2.SLL2, 0: _loopback,
            108: _loopback, 101: _raw_ip, 12: _raw_ip, 14: _raw_ip, 228: _raw_ip, 229: _raw_ip}


def _network(frame):
    import dpkt

    if isinstance(frame, (dpkt.ip.IP, dpkt.ip6.IP6)):
        return frame
    inner = getattr(frame, "data", None)
    return inner if isinstance(inner, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def _source(network) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(network.src) == 16 else socket.AF_INET, network.src)


def decode_pcap(path: str, decapsulation: str = "none", counted: list[int] | None = None) -> Iterator[pa.RecordBatch]:
    """Flow batches of a capture, decoded CHUNK datagrams at a time (`counted`: a one-item list
    that receives the number of datagrams read)."""
    decoder, chunk, mode = FlowDecoder(), [], DECAPSULATIONS.index(decapsulation)
    counted = counted if counted is not None else [0]
    for datagram in pcap_datagrams(path):
        chunk.append(datagram)
        counted[0] += 1
        if len(chunk) == CHUNK:
            yield decoder.decode_many(chunk, mode)
            chunk = []
    if chunk:
        yield decoder.decode_many(chunk, mode)


def _address(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)


def _value(name: str, value: object) -> object:
    if name in ADDRESSES:
        return _address(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat(timespec="milliseconds")
    if name == "TimeReceived":
        return datetime.fromtimestamp(value, UTC).isoformat()
    return value


def flow_rows(batch: pa.RecordBatch, columns: tuple[str, ...] = DECODED) -> Iterator[dict]:
    """The batch's flows as dicts of printable values."""
    data = batch.select(list(columns)).to_pydict()
    for i in range(batch.num_rows):
        yield {name: _value(name, data[name][i]) for name in columns}


def _print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    # Piped output is not cut to the 80 columns rich assumes without a terminal.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _fields(value: str | None) -> tuple[str, ...]:
    if not value:
        return DECODED
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in schema.BY_NAME or not schema.BY_NAME[name].stored]
    if unknown:
        raise click.BadParameter(f"not flow columns: {', '.join(unknown)} (columns: {', '.join(DECODED)})")
    return names


@click.command("decode")
@click.argument("pcap", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "table"]), default="table",
              show_default=True, help="jsonl and csv print every decoded column; table a summary")
@click.option("--fields", help="comma-separated columns to print, in this order (default: all decoded "
                               "columns; for table: a summary)")
@click.option("--decapsulation", type=click.Choice(DECAPSULATIONS), default="none", show_default=True,
              help="take the inner packet of this tunnel as the flow, as a listener with this setting")
def decode(pcap: str, fmt: str, fields: str | None, decapsulation: str) -> None:
    """Decode the NetFlow/IPFIX/sFlow datagrams of a capture and print the flow records; a
    summary line (datagrams, flows, undecodable input by reason) goes to stderr."""
    columns = _fields(fields)
    shown = columns if fields or fmt != "table" else TABLE
    errors_before = _errors()
    flows, datagrams = 0, [0]
    table_rows: list[dict] = []
    writer = None
    for batch in decode_pcap(pcap, decapsulation, datagrams):
        for row in flow_rows(batch, shown):
            flows += 1
            if fmt == "jsonl":
                click.echo(json.dumps(row))
            elif fmt == "csv":
                if writer is None:
                    writer = csv.DictWriter(sys.stdout, fieldnames=list(shown))
                    writer.writeheader()
                writer.writerow(row)
            else:
                table_rows.append(row)
    if fmt == "table":
        _print_table(table_rows, shown)
    problems = {r: int(n - errors_before[r]) for r, n in _errors().items() if n > errors_before[r]}
    detail = ", ".join(f"{reason} {count}" for reason, count in sorted(problems.items()))
    click.echo(f"{datagrams[0]} datagrams, {flows} flows; undecodable: {detail or 'none'}", err=True)


def _errors() -> dict[str, float]:
    return {r: c._value.get() for r, c in metrics.ERRORS_BY_REASON.items()}
