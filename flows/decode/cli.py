"""`waxflow decode FILE.pcap`: decode the exporter datagrams of a capture and print the flows.

The troubleshooting tool of the decoders (like `nfdump -r`): every UDP payload of the capture
is decoded with the exporter taken from the frame's source address (state per exporter, so
templates learnt from earlier datagrams apply to later ones) and the capture time as the
receive time. IP fragments are not reassembled: capture with a large enough MTU.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import sys
from datetime import datetime, timezone
from typing import Iterator

import click
import pyarrow as pa

from flows.decode import FlowDecoder, metrics

CHUNK = 256
# Columns the decoders fill (enrichment columns stay empty here), in display order.
DECODED = (
    "TimeReceived", "TimeFlowStart", "TimeFlowEnd", "ExporterAddress", "SamplingRate",
    "InIfIndex", "OutIfIndex", "FlowDirection", "SrcAddr", "DstAddr", "SrcNetMask", "DstNetMask",
    "NextHop", "SrcAS", "DstAS", "DstASPath", "EType", "Proto", "SrcPort", "DstPort",
    "Bytes", "Packets", "TCPFlags", "ICMPv4Type", "ICMPv4Code", "ICMPv6Type", "ICMPv6Code",
    "IPTos", "IPTTL", "ForwardingStatus", "SrcVlan", "DstVlan", "MPLSLabels", "SrcMAC", "DstMAC",
)
TABLE = ("TimeFlowStart", "ExporterAddress", "SrcAddr", "SrcPort", "DstAddr", "DstPort", "Proto",
         "InIfIndex", "OutIfIndex", "Packets", "Bytes", "SamplingRate")
ADDRESSES = {"ExporterAddress", "SrcAddr", "DstAddr", "NextHop"}


def pcap_datagrams(path: str) -> Iterator[tuple[bytes, str, float]]:
    """(UDP payload, source address, capture time) for every UDP datagram of a pcap."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    with PcapReader(path) as reader:
        for packet in reader:
            if UDP not in packet:
                continue
            network = packet[IP] if IP in packet else packet[IPv6] if IPv6 in packet else None
            if network is None:
                continue
            yield bytes(packet[UDP].payload), network.src, float(packet.time)


def decode_pcap(path: str) -> Iterator[pa.RecordBatch]:
    """Flow batches of a capture, decoded CHUNK datagrams at a time."""
    decoder, chunk = FlowDecoder(), []
    for datagram in pcap_datagrams(path):
        chunk.append(datagram)
        if len(chunk) == CHUNK:
            yield decoder.decode_many(chunk)
            chunk = []
    if chunk:
        yield decoder.decode_many(chunk)


def _address(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)


def _value(name: str, value: object) -> object:
    if name in ADDRESSES:
        return _address(value)
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc).isoformat(timespec="milliseconds")
    if name == "TimeReceived":
        return datetime.fromtimestamp(value, timezone.utc).isoformat()
    return value


def flow_rows(batch: pa.RecordBatch, columns: tuple[str, ...] = DECODED) -> Iterator[dict]:
    """The batch's flows as dicts of printable values."""
    data = batch.select(list(columns)).to_pydict()
    for i in range(batch.num_rows):
        yield {name: _value(name, data[name][i]) for name in columns}


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for name in TABLE:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(str(row[c]) for c in TABLE))
    # Piped output is not cut to the 80 columns rich assumes without a terminal.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


@click.command("decode")
@click.argument("pcap", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "table"]), default="table",
              show_default=True, help="jsonl and csv print every decoded column; table a summary")
def decode(pcap: str, fmt: str) -> None:
    """Decode the NetFlow/IPFIX/sFlow datagrams of a capture and print the flow records."""
    errors_before = _errors()
    flows = 0
    table_rows: list[dict] = []
    writer = None
    for batch in decode_pcap(pcap):
        for row in flow_rows(batch):
            flows += 1
            if fmt == "jsonl":
                click.echo(json.dumps(row))
            elif fmt == "csv":
                if writer is None:
                    writer = csv.DictWriter(sys.stdout, fieldnames=list(DECODED))
                    writer.writeheader()
                writer.writerow(row)
            else:
                table_rows.append(row)
    if fmt == "table":
        _print_table(table_rows)
    problems = {r: n - errors_before[r] for r, n in _errors().items() if n > errors_before[r]}
    summary = f"{flows} flows" + (f"; undecodable input: {problems}" if problems else "")
    click.echo(summary, err=True)


def _errors() -> dict[str, float]:
    return {r: c._value.get() for r, c in metrics.ERRORS_BY_REASON.items()}
