"""The Grafana dashboards: every panel's SQL, expanded the way Grafana and the ClickHouse plugin
expand it, runs on chDB loaded with flows from real exporters and returns rows; the JSON is
valid Grafana and matches the generator; Prometheus panels use metric names the code registers.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from datetime import UTC
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa
import pytest
import yaml
from prometheus_client import CollectorRegistry

from connectors import clickhouse
from connectors.clickhouse_sink import ClickHouseSink
from flows import dashboards, schema
from flows.decode import FlowDecoder
from flows.settings import ClickHouse
from tests import flowgen

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "compose" / "grafana" / "dashboards"
PROVISIONING = ROOT / "compose" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"

NOW = int(time.time())
HOUR, DAY = 3600, 86400
RECENT_SPAN = 3 * HOUR  # fresh flows are spread over the last three hours
OLD_AGE = 8 * DAY  # and some arrived 8 days ago, beyond the 1-minute table's retention

# Realistic enrichment the dashboards group by: three routers, each with transit, PNI, IX
# and core interfaces (name, description, speed Mbps, connectivity, provider, boundary).
EXPORTERS = {
    "192.0.2.1": "edge1.par1",
    "192.0.2.2": "edge2.fra1",
    "192.0.2.3": "edge1.ams1",
}
INTERFACES = [
    (11, "Hu0/0/0/1", "transit: Cogent [AS174]", 100000, "transit", "cogent", 1),
    (12, "Hu0/0/0/2", "pni: Netflix", 100000, "pni", "netflix", 1),
    (13, "Te0/1/0/4", "ix: France-IX", 10000, "ix", "franceix", 1),
    (21, "Hu0/2/0/0", "core: to core1", 400000, "core", "", 2),
    (22, "Hu0/2/0/1", "core: to core2", 400000, "core", "", 2),
]
REMOTE = [(174, b"US"), (2906, b"US"), (3215, b"FR"), (3320, b"DE"), (1136, b"NL"), (2856, b"GB")]
LOCAL = [(64500, b"FR")]


# --- what Grafana and the plugin do to a query ---------------------------------------------------

class Grafana:
    """Expands a query as the ClickHouse plugin does: `$__conditionalAll` first (the frontend),
    then template variables (Grafana's templateSrv with the plugin's formatter), then the
    backend macros ($__timeFilter, $__timeInterval, $__interval_s, $__fromTime, $__toTime)."""

    def __init__(self, variables: dict[str, Any], start: int, end: int, interval: int) -> None:
        self.variables = variables
        self.start, self.end, self.interval = start, end, max(interval, 1)

    @staticmethod
    def _args(sql: str, open_at: int) -> tuple[list[str], int]:
        """Arguments of a macro call whose '(' is at open_at, split at top-level commas."""
        depth, args, start = 0, [], open_at + 1
        for i in range(open_at, len(sql)):
            if sql[i] == "(":
                depth += 1
            elif sql[i] == ")":
                depth -= 1
                if depth == 0:
                    args.append(sql[start:i])
                    return args, i + 1
            elif sql[i] == "," and depth == 1:
                args.append(sql[start:i])
                start = i + 1
        raise AssertionError(f"unbalanced macro call in {sql!r}")

    def _is_all(self, value: Any) -> bool:
        return value in ("", "$__all") or value == ["$__all"]

    def conditional_all(self, sql: str) -> str:
        macro = "$__conditionalAll("
        while (at := sql.rfind(macro)) != -1:
            args, end = self._args(sql, at + len(macro) - 1)
            assert len(args) == 2, f"$__conditionalAll takes 2 arguments: {args}"
            name = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", args[1].strip()).group(0)
            phrase = "1=1" if self._is_all(self.variables.get(name, "")) else args[0]
            sql = sql[:at] + phrase + sql[end:]
        return sql

    def _values(self, name: str) -> list[str]:
        value = self.variables[name]
        if self._is_all(value):
            return list(self.variables.get(f"{name}:options", []))
        return value if isinstance(value, list) else [value]

    def substitute(self, sql: str) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            fmt = match.group(3)
            if name not in self.variables:
                return match.group(0)  # Grafana leaves unknown names (e.g. $__timeFilter) alone
            values = self._values(name)
            if fmt == "singlequote":
                return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
            assert fmt is None, f"format {fmt} not emulated"
            return values[0] if len(values) == 1 else "'" + "','".join(values) + "'"

        return re.sub(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}", replace, sql)

    def macros(self, sql: str) -> str:
        with_args = {
            "timeFilter": lambda c: (f"{c} >= toDateTime({self.start}) AND {c} <= toDateTime({self.end})"),
            "timeInterval": lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {self.interval} second)",
        }
        for name, expand in with_args.items():
            macro = f"$__{name}("
            while (at := sql.find(macro)) != -1:
                args, end = self._args(sql, at + len(macro) - 1)
                sql = sql[:at] + expand(args[0].strip()) + sql[end:]
        sql = re.sub(r"\$__fromTime\b", f"toDateTime({self.start})", sql)
        sql = re.sub(r"\$__toTime\b", f"toDateTime({self.end})", sql)
        return re.sub(r"\$__interval_s\b", str(self.interval), sql)

    def expand(self, sql: str) -> str:
        out = self.macros(self.substitute(self.conditional_all(sql)))
        assert "$" not in out, f"unexpanded variable or macro in {out}"
        return out


# --- data: real exporters' output, enriched, inserted by the sink ------------------------------

def _enrich(batch: pa.RecordBatch, exporter: str, times: np.ndarray, seed: int) -> pa.RecordBatch:
    n = batch.num_rows
    rng = np.random.default_rng(seed)
    columns = {name: batch.column(name) for name in batch.schema.names}
    inbound = rng.random(n) < 0.7  # most traffic enters from outside
    edge = rng.integers(0, 3, n)  # the transit/PNI/IX interface of the flow
    core = rng.integers(3, 5, n)
    in_if = np.where(inbound, edge, core)
    out_if = np.where(inbound, core, edge)
    remote = rng.integers(0, len(REMOTE), n)
    src_remote = [REMOTE[i] if b else LOCAL[0] for i, b in zip(remote, inbound)]
    dst_remote = [LOCAL[0] if b else REMOTE[i] for i, b in zip(remote, inbound)]
    for side, index in (("In", in_if), ("Out", out_if)):
        picked = [INTERFACES[i] for i in index]
        columns[f"{side}IfIndex"] = [p[0] for p in picked]
        columns[f"{side}IfName"] = [p[1] for p in picked]
        columns[f"{side}IfDescription"] = [p[2] for p in picked]
        columns[f"{side}IfSpeed"] = [p[3] for p in picked]
        columns[f"{side}IfConnectivity"] = [p[4] for p in picked]
        columns[f"{side}IfProvider"] = [p[5] for p in picked]
        columns[f"{side}IfBoundary"] = [p[6] for p in picked]
    columns["SrcAS"] = [a for a, _ in src_remote]
    columns["DstAS"] = [a for a, _ in dst_remote]
    columns["SrcCountry"] = [c for _, c in src_remote]
    columns["DstCountry"] = [c for _, c in dst_remote]
    columns["FlowDirection"] = np.where(inbound, 1, 2).astype(np.uint8)
    columns["ExporterAddress"] = [ipaddress.IPv6Address(f"::ffff:{exporter}").packed] * n
    columns["ExporterName"] = [EXPORTERS[exporter]] * n
    columns["ExporterSite"] = [EXPORTERS[exporter].split(".")[1]] * n
    columns["TimeReceived"] = times.astype(np.uint32)
    rates = batch.column("SamplingRate").to_numpy()
    columns["SamplingRate"] = np.where(rates > 0, rates, 1 if seed % 2 else 1000).astype(np.uint64)
    return schema.make_batch(columns, n)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> list[pa.RecordBatch]:
    """Flows of one traffic capture as softflowd (IPFIX, sampled 1:10), pmacct (NetFlow v9) and
    pmacct's sfprobe (sFlow) export them, decoded by waxflow's decoder, one router each."""
    for binary in ("softflowd", "pmacctd"):
        if not flowgen.have(binary):
            pytest.skip(reason=f"{binary} is not installed (scripts/apt-packages.txt)")
    pcap = tmp_path_factory.mktemp("pcap") / "traffic.pcap"
    flowgen.make_pcap(pcap, flows=400, packets_per_flow=(1, 12), filler=60)
    runs = [
        ("192.0.2.1", flowgen.run_softflowd(pcap, 10, sampling=10)),  # IPFIX, 1 packet in 10
        ("192.0.2.2", flowgen.run_pmacct(pcap, "nfprobe", 9)),
        ("192.0.2.3", flowgen.run_pmacct(pcap, "sfprobe")),
    ]
    batches = []
    for seed, (exporter, datagrams) in enumerate(runs):
        assert datagrams, f"no datagrams from the exporter of {exporter}"
        decoded = FlowDecoder().decode_many(datagrams)
        assert decoded.num_rows > 0
        n = decoded.num_rows
        # Most flows arrived over the last three hours, a fifth of them 8 days ago.
        recent = NOW - (np.arange(n) * RECENT_SPAN // n)
        times = np.where(np.arange(n) % 5 == 4, recent - OLD_AGE, recent)
        batches.append(_enrich(decoded, exporter, times, seed))
    return batches


@pytest.fixture(scope="module")
def loaded(exported, chdb_dir) -> ClickHouse:
    """The flows inserted through the outlet's sink (after the migrations); then the 1-minute
    table loses what is older than 7 days, as its TTL would do."""
    import uuid

    cfg = ClickHouse(dsn=f"chdb:{chdb_dir}", database=f"dash_{uuid.uuid4().hex[:8]}")
    clickhouse.migrate(cfg)
    part = ClickHouseSink(cfg, chdb_dir.parent / f"delivery-{cfg.database}").build_part("clickhouse", "chdb", None)
    part.write_batch([("", batch) for batch in exported])
    part.close()
    client = clickhouse.connect(cfg)
    client.command(f"ALTER TABLE `{cfg.database}`.flows_1m0s DELETE WHERE TimeReceived < now() - INTERVAL 7 DAY",
                   settings={"mutations_sync": 2})
    client.command(f"OPTIMIZE TABLE `{cfg.database}`.flows_1m0s FINAL")
    yield cfg
    client.command(f"DROP DATABASE IF EXISTS `{cfg.database}`")


# Panels run as Grafana's ClickHouse user does: with its read-only profile.
GRAFANA_USERS = ROOT / "compose" / "clickhouse" / "users.d" / "grafana.xml"
GRAFANA_READONLY = int(ElementTree.parse(GRAFANA_USERS).getroot().find("profiles/grafana_readonly/readonly").text)


def query(cfg: ClickHouse, sql: str) -> tuple[list[str], list[tuple]]:
    result = clickhouse.connect(cfg).query(sql, settings={"readonly": GRAFANA_READONLY})
    return list(result.column_names), result.result_rows


# --- resolving a dashboard's variables like Grafana does ------------------------------------

def interval_for(start: int, end: int, max_points: int = 1000, minimum: int = 1) -> int:
    """Grafana's panel interval: the range over the panel's width in points (about 1000 px)."""
    return max((end - start) // max_points, minimum)


def resolve_variables(board: dict, cfg: ClickHouse, start: int, end: int,
                      chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every variable of the dashboard in order, query variables run against the store; a
    multi-value variable is All unless `chosen` picks values."""
    chosen = chosen or {}
    values: dict[str, Any] = {}
    grafana = Grafana(values, start, end, interval_for(start, end))
    for variable in board["templating"]["list"]:
        name, kind = variable["name"], variable["type"]
        if kind == "constant":
            values[name] = cfg.database if name == "database" else variable["query"]
            continue
        if kind == "adhoc":
            continue
        if kind == "custom":
            options = [o["value"] for o in variable["options"]]
        else:
            _, rows = query(cfg, grafana.expand(variable["query"]))
            options = [str(row[0]) for row in rows]
        values[f"{name}:options"] = options
        if name in chosen:
            values[name] = chosen[name]
        elif variable.get("includeAll"):
            values[name] = "$__all"
        else:
            current = variable.get("current", {}).get("value")
            assert options, f"variable {name} has no value"
            values[name] = current if current in options else options[0]
    return values


def clickhouse_targets(board: dict):
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            if target["datasource"]["uid"] == dashboards.CLICKHOUSE["uid"]:
                yield panel, target


CLICKHOUSE_BOARDS = [name for name, build in dashboards.DASHBOARDS.items()
                     if any(True for _ in clickhouse_targets(build()))]
RANGES = {
    "last 30 minutes": (NOW - 1800, NOW),
    "last 3 hours": (NOW - 3 * HOUR, NOW),
    "last 2 days": (NOW - 2 * DAY, NOW),
    "last 30 days": (NOW - 30 * DAY, NOW),
    "an hour 8 days ago": (NOW - OLD_AGE - 1800, NOW - OLD_AGE + 1800),
}


def run_panel(cfg: ClickHouse, panel: dict, target: dict, values: dict, start: int, end: int):
    interval = interval_for(start, end, panel.get("maxDataPoints", 1000))
    sql = Grafana(values, start, end, interval).expand(target["rawSql"])
    columns, rows = query(cfg, sql)
    return sql, columns, rows


# --- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("board_name", CLICKHOUSE_BOARDS)
@pytest.mark.parametrize("range_name", list(RANGES))
def test_every_panel_returns_rows(loaded: ClickHouse, board_name: str, range_name: str) -> None:
    start, end = RANGES[range_name]
    board = dashboards.DASHBOARDS[board_name]()
    values = resolve_variables(board, loaded, start, end)
    for panel, target in clickhouse_targets(board):
        sql, columns, rows = run_panel(loaded, panel, target, values, start, end)
        assert rows, f"{board_name} / {panel['title']} returned no rows over {range_name}:\n{sql}"
        if target["format"] == dashboards.FORMATS[dashboards.TIME_SERIES]:
            assert columns[:2] == ["time", "series"], panel["title"]
            assert all(row[2] > 0 for row in rows), f"{panel['title']}: a bucket without traffic"
        else:
            numbers = [v for v in rows[0] if isinstance(v, (int, float)) and not isinstance(v, bool)]
            assert numbers and max(numbers) > 0, f"{panel['title']}: {rows[0]}"


@pytest.mark.parametrize(("range_name", "expected"), [
    ("last 30 minutes", "flows_1m0s"),  # finer than every table: the finest
    ("last 3 hours", "flows_1m0s"),
    ("last 2 days", "flows_5m0s"),  # ~860 s per point
    ("last 30 days", "flows_1h0m0s"),
    ("an hour 8 days ago", "flows_5m0s"),  # the 1-minute table no longer has those flows
])
def test_table_chooser_follows_range_and_retention(loaded: ClickHouse, range_name: str, expected: str) -> None:
    start, end = RANGES[range_name]
    values = resolve_variables(dashboards.traffic_overview(), loaded, start, end)
    assert values["table"] == expected
    assert int(values["resolution"]) == {"flows_1m0s": 60, "flows_5m0s": 300, "flows_1h0m0s": 3600}[expected]


@pytest.mark.parametrize(("range_name", "points"), [
    ("last 3 hours", 1000), ("last 2 days", 1000), ("last 30 days", 1000),
    ("last 3 hours", 70),  # a narrow panel: 154 s per point over 1-minute buckets
    ("last 2 days", 400),  # 432 s per point over 5-minute buckets
])
def test_time_buckets_are_whole_table_buckets_and_keep_every_bit(loaded: ClickHouse, range_name: str,
                                                                  points: int) -> None:
    """Time series on an aggregated table use buckets that are whole multiples of the table's
    resolution, and rate × bucket over all buckets gives back the raw flows' bits."""

    start, end = RANGES[range_name]
    board = dashboards.traffic_overview()
    values = resolve_variables(board, loaded, start, end)
    panel = next(p for p in board["panels"] if p["title"] == "Traffic by exporter")
    panel["maxDataPoints"] = points
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    resolution = int(values["resolution"])
    bucket = -(-max(interval_for(start, end, points), resolution) // resolution) * resolution
    times = {int(row[0].replace(tzinfo=UTC).timestamp()) for row in rows}
    assert all(t % bucket == 0 for t in times) and bucket % resolution == 0
    _, raw = query(loaded, f"SELECT sum(Bytes * SamplingRate) * 8 FROM `{loaded.database}`.flows WHERE "
                           f"toStartOfInterval(TimeReceived, toIntervalSecond({resolution})) "
                           f"BETWEEN toDateTime({start}) AND toDateTime({end})")
    assert sum(row[2] for row in rows) * bucket == pytest.approx(raw[0][0], rel=1e-9)


def _raw_average_bps(cfg: ClickHouse, start: int, end: int, condition: str = "1") -> float:
    _, rows = query(cfg, f"SELECT sum(Bytes * SamplingRate) * 8 FROM `{cfg.database}`.flows "
                         f"WHERE TimeReceived >= {start} AND TimeReceived <= {end} AND {condition}")
    return rows[0][0] / (end - start)


def test_traffic_is_multiplied_by_sampling_rate(loaded: ClickHouse, exported) -> None:
    """Top protocols over the aggregated table adds up to Bytes × SamplingRate of the raw flows
    (fewer than ten protocols: nothing is cut); softflowd's flows were sampled 1:10."""
    start, end = RANGES["last 3 hours"]
    board = dashboards.traffic_overview()
    values = resolve_variables(board, loaded, start, end)
    panel = next(p for p in board["panels"] if p["title"] == "Top protocols")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    total = sum(row[1] for row in rows)
    # The aggregated buckets start at whole minutes: compare over the same minute-aligned range.
    expected = _raw_average_bps(loaded, start - start % 60 + 60, end)
    assert total == pytest.approx(expected, rel=0.02)
    sampled = exported[0].column("SamplingRate").to_numpy()
    assert (sampled == 10).all(), "softflowd exported with sampling 10"


def test_exporter_variable_filters_panels(loaded: ClickHouse) -> None:
    start, end = RANGES["last 3 hours"]
    board = dashboards.traffic_overview()
    values = resolve_variables(board, loaded, start, end, {"exporter": ["edge2.fra1"]})
    assert values["exporter:options"] == sorted(EXPORTERS.values())
    panel = next(p for p in board["panels"] if p["title"] == "Traffic by exporter")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    assert {row[1] for row in rows} == {"edge2.fra1"}
    panel = next(p for p in board["panels"] if p["title"] == "Input interfaces")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    assert {row[0] for row in rows} == {"edge2.fra1"}
    names = {row[1]: row[3] for row in rows}
    assert names["Hu0/0/0/1"] == 100000 and names["Te0/1/0/4"] == 10000  # speeds from enrichment


def test_explorer_variables_filter_and_group(loaded: ClickHouse) -> None:
    start, end = RANGES["last 3 hours"]
    board = dashboards.explorer()
    chosen = {"exporter": ["edge1.par1", "edge1.ams1"], "interface": ["Te0/1/0/4"],
              "boundary": ["external"], "provider": ["franceix"], "dimension": "InIfProvider"}
    values = resolve_variables(board, loaded, start, end, chosen)
    assert set(values["provider:options"]) == {"cogent", "netflix", "franceix"}
    assert "Hu0/2/0/1" in values["interface:options"]
    panel = next(p for p in board["panels"] if p["title"] == "Traffic by $dimension")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    assert {row[1] for row in rows} <= {"franceix", ""} and "franceix" in {row[1] for row in rows}
    panel = next(p for p in board["panels"] if p["title"] == "Input interfaces")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    assert rows and {row[0] for row in rows} <= {"edge1.par1", "edge1.ams1"}
    # IX traffic enters on Te0/1/0/4 or leaves through it: either side matches the filter.
    assert all(row[1] == "Te0/1/0/4" or row[1].startswith("Hu0/2") for row in rows)


@pytest.mark.parametrize("dimension", dashboards.group_by_choices())
def test_explorer_groups_by_every_dimension(loaded: ClickHouse, dimension: str) -> None:
    start, end = RANGES["last 3 hours"]
    board = dashboards.explorer()
    values = resolve_variables(board, loaded, start, end, {"dimension": dimension})
    panel = next(p for p in board["panels"] if p["title"] == "Top $dimension")
    sql, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    assert rows, sql


def test_adhoc_filter_applies_to_explorer_queries(loaded: ClickHouse) -> None:
    """An ad-hoc filter becomes the `additional_table_filters` setting on the panel's table,
    as the plugin appends it."""
    start, end = RANGES["last 3 hours"]
    board = dashboards.explorer()
    values = resolve_variables(board, loaded, start, end)
    panel = next(p for p in board["panels"] if p["title"] == "Traffic by $dimension")
    sql, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    assert {row[1] for row in rows} == set(EXPORTERS.values())
    table = f"{loaded.database}.{values['table']}"
    filtered = sql + f"\nsettings additional_table_filters={{'{table}' : ' ExporterSite = \\'fra1\\' '}}"
    _, rows = query(loaded, filtered)
    assert {row[1] for row in rows} == {"edge2.fra1"}


# --- the JSON itself ---------------------------------------------------------------------------

def _all_panels(board: dict):
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.mark.parametrize("name", list(dashboards.DASHBOARDS))
def test_dashboard_is_valid_grafana_json(name: str) -> None:
    board = json.loads((DASHBOARD_DIR / f"{name}.json").read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    panels = list(_all_panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    provisioned = {d["uid"] for d in yaml.safe_load(PROVISIONING.read_text())["datasources"]}
    defined = {v["name"] for v in board["templating"]["list"]}
    builtin = {"__interval_s", "__timeFilter", "__timeInterval", "__fromTime", "__toTime",
               "__conditionalAll", "__rate_interval", "__all"}
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in provisioned, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in provisioned
            text = target.get("rawSql") or target["expr"]
            used = set(re.findall(r"\$\{?(\w+)", text)) | set(re.findall(r"\$(\w+)", panel["title"]))
            assert used <= defined | builtin, f"{panel['title']}: undefined {used - defined - builtin}"
    for variable in board["templating"]["list"]:
        if "datasource" in variable:
            assert variable["datasource"]["uid"] in provisioned


def test_committed_dashboards_match_the_generator() -> None:
    for name, builder in dashboards.DASHBOARDS.items():
        path = DASHBOARD_DIR / f"{name}.json"
        assert path.exists() and path.read_text() == dashboards.render(builder), \
            f"{path.name} is out of date: run `waxflow dashboards`"
    committed = {p.stem for p in DASHBOARD_DIR.glob("*.json")}
    assert committed == set(dashboards.DASHBOARDS), "a dashboard file no generator writes"


def test_a_schema_column_that_is_not_aggregated_is_refused() -> None:
    with pytest.raises(ValueError):
        dashboards.label("SrcAddr")  # addresses are only in the raw table
    with pytest.raises(KeyError):
        dashboards.col("NoSuchColumn")


# --- Prometheus panels -------------------------------------------------------------------------

def exposed_names() -> set[str]:
    """Every sample name the code's metrics expose (counters as _total, histograms as
    _bucket/_sum/_count), including labelled metrics that have no child yet."""
    from prometheus_client import REGISTRY

    import connectors.clickhouse_sink  # noqa: F401  (registers its metrics)
    import connectors.http  # noqa: F401
    import connectors.kafka_consumer  # noqa: F401
    import connectors.snmp  # noqa: F401
    import flows.decode.metrics  # noqa: F401
    import flows.enrich.metadata  # noqa: F401
    import flows.enrich.sampling  # noqa: F401
    import flows.outlet_steps  # noqa: F401
    from connectors.metrics import InletMetrics

    inlet = CollectorRegistry()
    InletMetrics(inlet)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("_sum", "_count", "")}
    names = set()
    for registry in (REGISTRY, inlet):
        for family in registry.collect():  # labelled metrics without children come without samples
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_prometheus_panels_use_registered_metrics() -> None:
    board = dashboards.pipeline_health()
    exposed = exposed_names()
    assert "waxflow_clickhouse_rows_total" in exposed and "waxflow_inlet_kernel_drops_total" in exposed
    used = set()
    for panel in board["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"\bwaxflow_[a-z0-9_]+", target["expr"]))
    assert used <= exposed, f"unknown metrics: {sorted(used - exposed)}"
    required = {"waxflow_inlet_datagrams_total", "waxflow_inlet_kernel_drops_total", "waxflow_kafka_consumer_lag",
                "waxflow_decode_errors_total", "waxflow_clickhouse_rows_total",
                "waxflow_clickhouse_insert_seconds_bucket", "waxflow_snmp_cache_hits_total",
                "waxflow_snmp_held_flows_total", "waxflow_api_requests_total"}
    assert required <= used


def test_panels_run_on_an_empty_store(store: ClickHouse) -> None:
    """A fresh installation: the chooser still names a table and every panel's SQL runs."""
    clickhouse.migrate(store)
    start, end = RANGES["last 3 hours"]
    for name in CLICKHOUSE_BOARDS:
        board = dashboards.DASHBOARDS[name]()
        values = resolve_variables(board, store, start, end)
        assert values["table"] == "flows_1m0s" and values["exporter:options"] == []
        for panel, target in clickhouse_targets(board):
            _, _, rows = run_panel(store, panel, target, values, start, end)
            assert rows == [], panel["title"]


def test_addresses_and_countries_read_as_text(loaded: ClickHouse) -> None:
    start, end = RANGES["last 3 hours"]
    board = dashboards.top_talkers()
    values = resolve_variables(board, loaded, start, end)
    panel = next(p for p in board["panels"] if p["title"] == "Top sources")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    names = [ipaddress.ip_address(row[0]) for row in rows]
    # IPv4 sources read as dotted quads, not as IPv4-mapped IPv6 ("::ffff:10.0.0.1").
    assert any(a.version == 4 for a in names) and any(a.version == 6 for a in names)
    assert not any(a.version == 6 and a.ipv4_mapped for a in names)
    board = dashboards.explorer()
    values = resolve_variables(board, loaded, start, end, {"dimension": "SrcCountry"})
    panel = next(p for p in board["panels"] if p["title"] == "Top $dimension")
    _, _, rows = run_panel(loaded, panel, panel["targets"][0], values, start, end)
    countries = {row[0] for row in rows}
    assert "FR" in countries and countries <= {c.decode() for _, c in REMOTE + LOCAL}


def test_alerts_show_as_annotations_on_every_dashboard(loaded: ClickHouse) -> None:
    """The annotation query, as Grafana expands it, gives each alert on in the range with its
    start, end (now while on) and text; one ended before the range is left out."""
    from connectors.alerts import AlertSink
    from flows import detect
    from flows.settings.alerts import Alerts

    sink = AlertSink(Alerts(defaults=False, rules=[{"name": "amp", "threshold": 1}]), loaded.database,
                     clickhouse.connect(loaded))
    key = (bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7]),)
    sink.handle(detect.Event("start", "amp", key, NOW - 900, None, 2e9, 2e9), {}, 0)
    sink.handle(detect.Event("start", "amp", key, NOW - 5 * HOUR, None, 1e9, 1e9), {}, 0)
    sink.handle(detect.Event("end", "amp", key, NOW - 5 * HOUR, NOW - 4 * HOUR, 3e9, 3e9), {}, 0)
    for name, build in dashboards.DASHBOARDS.items():
        (annotation,) = build()["annotations"]["list"]
        board = build()
        values = resolve_variables(board, loaded, NOW - 3 * HOUR, NOW) if board["templating"]["list"] else {}
        values.setdefault("database", loaded.database)
        sql = Grafana(values, NOW - 3 * HOUR, NOW, 60).expand(annotation["target"]["rawSql"])
        columns, rows = query(loaded, sql)
        assert columns == ["time", "timeEnd", "text", "tags"], name
        assert len(rows) == 1 and rows[0][0] == (NOW - 900) * 1000 and rows[0][1] >= rows[0][0], (name, rows)
        assert rows[0][2].startswith("amp: 203.0.113.7") and rows[0][3] == ["amp"]
