"""Faults through the running outlet (`waxflow run outlet` on the real broker and chDB): Kafka
messages that are not envelopes, datagrams that are not flows or use a template never sent, and
a storage period where ClickHouse cannot write. Nothing crashes, /metrics says what happened, and
once the store accepts again every good flow is stored exactly once."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import envelope
from tests.conftest import free_port
from tests.outlet_process import (
    Outlet,
    create_topic,
    expected_v5_flows,
    produce,
    v5_messages,
    write_config,
)

pytestmark = pytest.mark.slow

EXPORTERS = ["192.0.2.1", "2001:db8::7"]


def v9_data_without_template(template_id: int = 300) -> bytes:
    """A NetFlow v9 datagram whose only set is data for a template the exporter never sent."""
    records = b"\x00" * 16
    flowset = struct.pack("!HH", template_id, 4 + len(records)) + records
    header = struct.pack("!HHIIII", 9, 1, 1000, int(time.time()), 1, 0)
    return header + flowset


@contextlib.contextmanager
def writes_refused(directory: Path) -> Iterator[None]:
    """The table's directory refuses new entries: immutable for root (chattr +i, which even
    root cannot write through), read-only permissions for anyone else."""
    if os.geteuid() == 0:
        if not shutil.which("chattr"):
            pytest.skip(reason="chattr (e2fsprogs) missing to make a directory immutable")
        done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(reason=f"this filesystem has no immutable attribute: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)


def healthz(port: int) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_messages_unknown_templates_and_a_store_refusing_writes(broker, tmp_path: Path) -> None:
    topic = f"faults-{tmp_path.name[-10:].replace('_', '-')}"
    create_topic(broker.bootstrap, envelope.topic_name(topic), 2)
    api_port = free_port()
    config = write_config(tmp_path, bootstrap=broker.bootstrap, topic=topic, api_port=api_port,
                          batch_wait="1s", clickhouse={"unhealthy_after": "2s"})
    outlet = Outlet(config, api_port).start()
    kafka_topic = envelope.topic_name(topic)
    try:
        # 1. good flows mixed with messages the outlet cannot use
        bad = [
            (b"k", b"not an envelope"),
            (b"k", None),  # a tombstone: no value at all
            (envelope.address_bytes(EXPORTERS[0]),  # an envelope whose datagram is not flows
             envelope.encode("netflow", 0, time.time_ns(), EXPORTERS[0], 2055, b"\x00\x07junk")),
            (envelope.address_bytes(EXPORTERS[1]),  # data for a template never sent
             envelope.encode("netflow", 0, time.time_ns(), EXPORTERS[1], 2055, v9_data_without_template())),
        ]
        sent = produce(broker.bootstrap, kafka_topic, [*v5_messages(range(0, 20), EXPORTERS), *bad,
                                                       *v5_messages(range(20, 40), EXPORTERS)])
        outlet.wait_idle(sent)
        assert outlet.value("waxflow_outlet_dropped_messages_total", reason="bad_envelope") == 2
        assert outlet.value("waxflow_decode_errors_total", reason="unknown_version") == 1
        assert outlet.value("waxflow_decode_held_sets_total", outcome="held") == 1
        assert outlet.value("waxflow_clickhouse_rows_total") == 400

        # 2. the store cannot write for a while: rows are held (and consumption stops), then
        # inserted once it can again
        flows_dir = (tmp_path / "data" / "clickhouse" / "data" / "waxflow" / "flows").resolve()
        with writes_refused(flows_dir):
            sent += produce(broker.bootstrap, kafka_topic, v5_messages(range(40, 80), EXPORTERS))
            outlet.wait_for(lambda o: o.value("waxflow_clickhouse_retries_total") >= 2, 60,
                            "failed inserts retried")
            assert outlet.value("waxflow_clickhouse_errors_total", reason="storage") >= 2
            assert outlet.value("waxflow_clickhouse_rows_total") == 400
            # reads still work, but /healthz says the inserts have failed for too long
            outlet.wait_for(lambda o: healthz(api_port)[0] == 503, 30, "/healthz unhealthy")
            status, body = healthz(api_port)
            assert body["components"]["store"]["ok"] is True
            assert body["components"]["last_insert"]["ok"] is False
            assert body["components"]["last_insert"]["failing_for_seconds"] >= 2  # (rounded to 0.1 s)
            assert outlet.value("waxflow_clickhouse_failing_since_seconds") > 0
            # the worker reads on until its next flush has to wait for the refused insert...
            sent += produce(broker.bootstrap, kafka_topic, v5_messages(range(80, 100), EXPORTERS))
            outlet.wait_for(lambda o: o.value("waxflow_clickhouse_pending_rows") == 600, 30,
                            "rows held")
            time.sleep(2)  # (the flush is due 1 s after those rows came)
            # ... then stops reading: what arrives now waits in Kafka, and the lag says so
            sent += produce(broker.bootstrap, kafka_topic, v5_messages(range(100, 120), EXPORTERS))
            outlet.wait_for(lambda o: o.value("waxflow_kafka_consumer_lag") == 20, 30, "lag of 20")
            assert outlet.value("waxflow_clickhouse_pending_rows") == 600
        outlet.wait_idle(sent)
        outlet.wait_for(lambda o: o.value("waxflow_kafka_consumer_lag") == 0, 30, "lag back to 0")
        assert outlet.value("waxflow_clickhouse_rows_total") == 1200
        outlet.wait_for(lambda o: healthz(api_port)[0] == 200, 30, "/healthz healthy again")
        assert outlet.value("waxflow_clickhouse_failing_since_seconds") == 0
        outlet.kill()
    finally:
        outlet.stop()

    stored, totals = outlet.query(
        "SELECT SrcPort, DstPort, Bytes, Packets FROM waxflow.flows",
        "SELECT (SELECT sum(Bytes) FROM waxflow.flows) AS raw, "
        "(SELECT sum(Bytes) FROM waxflow.flows_1m0s) AS m1, (SELECT sum(Bytes) FROM waxflow.flows_5m0s) AS m5, "
        "(SELECT sum(Bytes) FROM waxflow.flows_1h0m0s) AS h1")
    pairs = [(row["SrcPort"], row["DstPort"]) for row in stored]
    assert len(pairs) == len(set(pairs)) == 1200  # nothing lost, nothing twice
    assert set(pairs) == expected_v5_flows(range(120))
    # a refused insert wrote nothing to the aggregated tables either
    assert totals[0]["raw"] == totals[0]["m1"] == totals[0]["m5"] == totals[0]["h1"]

