"""`waxflow decode FILE.pcap`: decodes a capture of exporter datagrams and prints the flows."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flows.decode.cli import decode
from tests import flowgen


@pytest.fixture(scope="module")
def export_capture(tmp_path_factory):
    """A pcap of the datagrams softflowd sent as IPFIX and as NetFlow v9 (two exporters), as a collector sees them."""
    if not (flowgen.have("softflowd") and flowgen.have("pmacctd")):
        pytest.skip(reason="softflowd or pmacctd binary missing (Debian packages softflowd, pmacct)")
    tmp = tmp_path_factory.mktemp("cli")
    totals = flowgen.make_pcap(tmp / "traffic.pcap", flows=30)
    flowgen.write_capture(tmp / "exports.pcap", {
        "192.0.2.1": flowgen.run_softflowd(tmp / "traffic.pcap", 10),
        "192.0.2.2": flowgen.run_softflowd(tmp / "traffic.pcap", 9),
    })
    return tmp / "exports.pcap", totals


def test_jsonl_has_every_flow_per_exporter(export_capture):
    path, totals = export_capture
    result = CliRunner().invoke(decode, [str(path), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["ExporterAddress"] for r in rows} == {"192.0.2.1", "192.0.2.2"}
    for exporter in ("192.0.2.1", "192.0.2.2"):
        assert flowgen.jsonl_totals(rows, exporter) == totals


@pytest.mark.parametrize("fmt", ["csv", "table"])
def test_csv_and_table(export_capture, fmt):
    path, totals = export_capture
    result = CliRunner().invoke(decode, [str(path), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert "SrcAddr" in result.stdout and "192.0.2.1" in result.stdout
    if fmt == "csv":
        assert len(result.stdout.strip().splitlines()) == 1 + 2 * len(totals)
