"""nfdump's nfreplay as an exporter: what softflowd exported from a generated pcap is stored by
a real nfcapd, replayed by nfreplay as NetFlow v5 and v9, captured into a pcap and decoded with
`waxflow decode`; the per-5-tuple packet and byte totals must equal the generated pcap's."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from click.testing import CliRunner

from tests import flowgen
from tests.conftest import free_port
from waxflow.decode_cli import decode

pytestmark = pytest.mark.skipif(
    not all(flowgen.have(binary) for binary in ("softflowd", "nfcapd", "nfreplay")),
    reason="softflowd, nfcapd or nfreplay missing (Debian packages softflowd, nfdump)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nfreplay")
    totals = flowgen.make_pcap(tmp / "traffic.pcap", flows=80)
    return tmp, totals, flowgen.run_softflowd(tmp / "traffic.pcap", 9)


@pytest.mark.parametrize("version", [5, 9])
def test_nfreplay_capture_decodes_to_the_pcap_totals(exported, version):
    tmp, totals, datagrams = exported
    replayed = flowgen.run_nfcapd_nfreplay(datagrams, version, free_port(socket.SOCK_DGRAM))
    assert replayed and {struct.unpack_from("!H", payload)[0] for payload, _, _ in replayed} == {version}
    capture = tmp / f"nfreplay-v{version}.pcap"
    flowgen.write_capture(capture, {"192.0.2.7": replayed})
    result = CliRunner().invoke(decode, [str(capture), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {row["ExporterAddress"] for row in rows} == {"192.0.2.7"}
    # NetFlow v5 carries IPv4 flows only: nfreplay leaves the IPv6 ones out.
    expected = totals if version == 9 else {k: v for k, v in totals.items() if ":" not in k[0]}
    assert flowgen.jsonl_totals(rows) == expected
