"""Grafana dashboards, generated from flows/schema.py and flows/ddl.py.

`waxflow dashboards` writes them to compose/grafana/dashboards/*.json (committed; a test fails
when they drift from this generator). Every column a panel names is looked up in the schema,
so a renamed or dropped column stops the generator instead of leaving a broken panel behind;
the explorer's "group by" choices and the table chooser come from the schema and the
resolutions in flows/ddl.py.

SQL follows the Grafana ClickHouse plugin (grafana-clickhouse-datasource 4.x): macros
$__timeFilter, $__timeInterval, $__interval_s, $__fromTime/$__toTime, $__conditionalAll, and
template variables (${exporter:singlequote}). Traffic is always Bytes/Packets × SamplingRate.

Which table a panel reads:
- long-range panels read `${table}`, a hidden variable that picks the aggregated table
  (flows_1m0s, flows_5m0s, flows_1h0m0s) from the time range: the coarsest resolution that
  still gives about TARGET_POINTS points, among the tables that still hold data for the start
  of the range (their TTLs differ); `${resolution}` is that table's bucket in seconds;
- panels that need addresses or ports read the raw `flows` table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flows import ddl, schema

DATABASE = "waxflow"
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "waxflow-clickhouse"}
PROMETHEUS = {"type": "prometheus", "uid": "waxflow-prometheus"}
DATASOURCES = (CLICKHOUSE, PROMETHEUS)
SCHEMA_VERSION = 39  # Grafana 11
TARGET_POINTS = 200
# Aggregated tables whose oldest data is within this of the range start still "cover" it:
# the 1-hour table's first bucket starts before the first flow, which must not make it win.
COVERAGE_SLACK = 3600
TOP = 10

AGG_SOURCE = "${database}.${table}"
RAW_SOURCE = "${database}.flows"
# A time bucket on an aggregated table: the panel's interval rounded up to a whole number of
# the table's buckets, so every time bucket sums the same number of rows.
BUCKET = "(intDiv($__interval_s + ${resolution} - 1, ${resolution}) * ${resolution})"
RANGE_SECONDS = "greatest(dateDiff('second', $__fromTime, $__toTime), 1)"
UNITS = {"bps": "sum(Bytes * SamplingRate) * 8", "pps": "sum(Packets * SamplingRate)"}
ORDER_BY_TRAFFIC = "sum(Bytes * SamplingRate) DESC"
WANTED_SECONDS = f"dateDiff('second', $__fromTime, $__toTime) / {TARGET_POINTS}"


# --- columns and expressions ----------------------------------------------------------------

def col(name: str, *, aggregated: bool = True) -> str:
    """A schema column name; `aggregated` ones must be kept by the aggregated tables."""
    column = schema.BY_NAME[name]  # KeyError: the schema no longer has it
    if aggregated and not (column.aggregated or column.summed):
        raise ValueError(f"{name} is not kept by the aggregated tables")
    return name


def label(name: str, *, aggregated: bool = True) -> str:
    """A readable text for a column's values: AS and protocol names from the dictionaries,
    enum names, addresses without the IPv4-mapped prefix, countries without padding."""
    name = col(name, aggregated=aggregated)
    if name.endswith("AS"):
        return (f"trimRight(concat('AS', toString({name}), ' ', "
                f"dictGetOrDefault('${{database}}.asns', 'name', toUInt64({name}), '')))")
    if name == "Proto":
        return "dictGetOrDefault('${database}.protocols', 'name', toUInt64(Proto), toString(Proto))"
    return text_of(name)


def text_of(expression: str) -> str:
    """Any column as text, for columns chosen at view time too: FixedString padding removed,
    IPv4 addresses without their IPv4-mapped prefix."""
    return f"replaceRegexpOne(replaceAll(toString({expression}), char(0), ''), '^::ffff:', '')"


def port_label(name: str) -> str:
    return f"concat({label('Proto')}, '/', toString({col(name, aggregated=False)}))"


def group_by_choices() -> list[str]:
    """Columns the explorer can group by: every dimension the aggregated tables keep."""
    return [c.name for c in schema.AGGREGATED
            if c.stored and not c.summed and c.name not in ("TimeReceived", "SamplingRate")]


# --- filters ---------------------------------------------------------------------------------

def _either_side(suffix: str, var: str, *, as_text: bool = False) -> str:
    """The variable's values match the input or the output interface's attribute."""
    sides = []
    for io in ("In", "Out"):
        column = col(f"{io}{suffix}")
        sides.append(f"{f'toString({column})' if as_text else column} IN (${{{var}:singlequote}})")
    return f"$__conditionalAll(({' OR '.join(sides)}), ${var})"


EXPORTER_FILTER = f"$__conditionalAll({col('ExporterName')} IN (${{exporter:singlequote}}), $exporter)"
INTERFACE_FILTER = _either_side("IfName", "interface")
BOUNDARY_FILTER = _either_side("IfBoundary", "boundary", as_text=True)
PROVIDER_FILTER = _either_side("IfProvider", "provider")


def where(*conditions: str) -> str:
    return " AND ".join(("$__timeFilter(TimeReceived)", *conditions))


# --- SQL builders ----------------------------------------------------------------------------

def _top_or_other(expression: str, source: str, condition: str, top: int) -> str:
    """The expression for the `top` largest values in the range, 'Other' for the rest."""
    return (f"if({expression} IN (SELECT {expression} FROM {source} WHERE {condition} "
            f"GROUP BY 1 ORDER BY {ORDER_BY_TRAFFIC} LIMIT {top}), {expression}, 'Other')")


def series_sql(expression: str, unit: str, condition: str, *, raw: bool = False, top: int = TOP) -> str:
    """Traffic per time bucket and series (the plugin turns `series` into one line each).

    Aggregated tables: buckets are whole multiples of the table's resolution, and the rate is
    divided by the bucket actually used. Raw table: the panel's own interval.
    """
    source = RAW_SOURCE if raw else AGG_SOURCE
    time = "$__timeInterval(TimeReceived)" if raw else f"toStartOfInterval(TimeReceived, toIntervalSecond({BUCKET}))"
    bucket = "$__interval_s" if raw else BUCKET
    series = _top_or_other(expression, source, condition, top) if top else expression
    return (f"SELECT {time} AS time, {series} AS series, {UNITS[unit]} / {bucket} AS {unit}\n"
            f"FROM {source}\nWHERE {condition}\nGROUP BY time, series\nORDER BY time")


def averages(*units: str) -> str:
    """Average rates over the dashboard's range, one column per unit."""
    return ", ".join(f"{UNITS[unit]} / {RANGE_SECONDS} AS {unit}" for unit in units)


def top_sql(expression: str, unit: str, condition: str, *, raw: bool = False, limit: int = TOP) -> str:
    """The largest values of an expression by average traffic over the range."""
    source = RAW_SOURCE if raw else AGG_SOURCE
    return (f"SELECT {expression} AS name, {averages(unit)}\n"
            f"FROM {source}\nWHERE {condition}\nGROUP BY name\nORDER BY {unit} DESC\nLIMIT {limit}")


def interfaces_sql(side: str, condition: str, limit: int = 50) -> str:
    """Traffic per interface with its name, description, speed and attributes."""
    names = [("ExporterName", "exporter")] + [
        (col(f"{side}If{suffix}"), alias) for suffix, alias in (
            ("Name", "interface"), ("Description", "description"), ("Speed", "speed"),
            ("Connectivity", "connectivity"), ("Provider", "provider"))]
    columns = ", ".join(f"{name} AS {alias}" for name, alias in names)
    aliases = ", ".join(alias for _, alias in names)
    return (f"SELECT {columns}, toString({col(side + 'IfBoundary')}) AS boundary, "
            f"{averages('bps', 'pps')}, if(speed > 0, bps / (speed * 1000000), NULL) AS utilization\n"
            f"FROM {AGG_SOURCE}\nWHERE {condition}\nGROUP BY {aliases}, boundary\n"
            f"ORDER BY bps DESC\nLIMIT {limit}")


def conversations_sql(condition: str, limit: int = 50) -> str:
    """Top conversations: source, destination, protocol and destination port (raw table)."""
    return (f"SELECT {label('SrcAddr', aggregated=False)} AS source, "
            f"{label('DstAddr', aggregated=False)} AS destination, {label('Proto')} AS protocol, "
            f"{col('DstPort', aggregated=False)} AS port, {averages('bps', 'pps')}, "
            f"sum(Bytes * SamplingRate) AS bytes\n"
            f"FROM {RAW_SOURCE}\nWHERE {condition}\nGROUP BY source, destination, protocol, port\n"
            f"ORDER BY bytes DESC\nLIMIT {limit}")


def aggregate_tables() -> list[tuple[str, int]]:
    """(table, bucket seconds) of the aggregated tables, finest first."""
    return list(zip(ddl.AGGREGATE_TABLES, (seconds for _, seconds, _ in ddl.RESOLUTIONS)))


def table_chooser_sql() -> str:
    """The `table` variable: which aggregated table answers the dashboard's time range."""
    candidates = ", ".join(f"('{name}', {seconds})" for name, seconds in aggregate_tables())
    names = ", ".join(f"'{name}'" for name, _ in aggregate_tables())
    oldest = (f"SELECT table AS name, min(min_time) AS oldest FROM system.parts "
              f"WHERE database = '${{database}}' AND active AND rows > 0 AND table IN ({names}) GROUP BY table")
    return (
        f"SELECT name FROM (\n"
        f"  SELECT tupleElement(candidate, 1) AS name, tupleElement(candidate, 2) AS seconds\n"
        f"  FROM system.one ARRAY JOIN [{candidates}] AS candidate\n"
        f") AS c LEFT JOIN ({oldest}) AS p USING name\n"
        f"ORDER BY\n"
        f"  p.oldest <= greatest($__fromTime, (SELECT min(oldest) FROM ({oldest}))) + {COVERAGE_SLACK} DESC,\n"
        f"  seconds <= {WANTED_SECONDS} DESC,\n"
        f"  if(seconds <= {WANTED_SECONDS}, -seconds, seconds)\n"
        f"LIMIT 1")


def resolution_sql() -> str:
    """The `resolution` variable: the bucket (seconds) of the table `table` chose."""
    tables = aggregate_tables()
    names = ", ".join(f"'{name}'" for name, _ in tables)
    seconds = ", ".join(str(s) for _, s in tables)
    return f"SELECT transform('${{table}}', [{names}], [{seconds}], {tables[0][1]})"


# --- Grafana JSON -----------------------------------------------------------------------------

@dataclass
class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new row."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    next_id: int = 1
    panels: list[dict[str, Any]] = field(default_factory=list)

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel = {"id": self.next_id, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}, **panel}
        self.panels.append(panel)
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1


# The plugin's query types (its editor) and the frame formats its backend builds (the Grafana
# plugin SDK's sqlutil.FormatQueryOption: 0 time series, 1 table).
TIME_SERIES, TABLE = "timeseries", "table"
FORMATS = {TIME_SERIES: 0, TABLE: 1}


def ch_target(sql: str, query_type: str) -> dict[str, Any]:
    return {"refId": "A", "datasource": CLICKHOUSE, "editorType": "sql", "queryType": query_type,
            "format": FORMATS[query_type], "rawSql": sql}


def traffic(title: str, sql: str, unit: str) -> dict[str, Any]:
    """A stacked time series of ClickHouse traffic, one line per `series` value."""
    return timeseries(title, [ch_target(sql, TIME_SERIES)], unit)


def prom_target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": PROMETHEUS, "expr": expr, "legendFormat": legend, "range": True}


def timeseries(title: str, targets: list[dict[str, Any]], unit: str, *, stacked: bool = True) -> dict[str, Any]:
    datasource = targets[0]["datasource"]
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 60 if stacked else 10,
                   "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
                   "showPoints": "never"},
    }
    if datasource is CLICKHOUSE:
        defaults["displayName"] = "${__field.labels.series}"
    return {"type": "timeseries", "title": title, "datasource": datasource,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def bargauge(title: str, sql: str, unit: str) -> dict[str, Any]:
    return {"type": "bargauge", "title": title, "datasource": CLICKHOUSE,
            "targets": [ch_target(sql, TABLE)],
            "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
            "options": {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                        "reduceOptions": {"values": True, "calcs": [], "fields": f"/^{unit}$/"}}}


def table(title: str, sql: str, units: dict[str, str]) -> dict[str, Any]:
    overrides = [{"matcher": {"id": "byName", "options": name},
                  "properties": [{"id": "unit", "value": unit}]} for name, unit in units.items()]
    return {"type": "table", "title": title, "datasource": CLICKHOUSE,
            "targets": [ch_target(sql, TABLE)],
            "fieldConfig": {"defaults": {}, "overrides": overrides},
            "options": {"showHeader": True, "cellHeight": "sm"}}


INTERFACE_UNITS = {"speed": "Mbits", "bps": "bps", "pps": "pps", "utilization": "percentunit"}
CONVERSATION_UNITS = {"bps": "bps", "pps": "pps", "bytes": "decbytes"}


def query_variable(name: str, sql: str, *, multi: bool = True, hide: int = 0) -> dict[str, Any]:
    """Refreshed on time range change (refresh 2): the table chooser depends on the range."""
    variable: dict[str, Any] = {
        "name": name, "label": name, "type": "query", "datasource": CLICKHOUSE,
        "query": sql, "definition": sql, "refresh": 2, "hide": hide, "sort": 1,
        "multi": multi, "includeAll": multi,
    }
    variable["current"] = {"text": "All", "value": "$__all"} if multi else {}
    return variable


def custom_variable(name: str, values: Iterable[str], *, label_text: str = "", multi: bool = True,
                    default: str | None = None) -> dict[str, Any]:
    values = list(values)
    current = default if default is not None else ("$__all" if multi else values[0])
    return {"name": name, "label": label_text or name, "type": "custom", "query": ",".join(values),
            "multi": multi, "includeAll": multi, "hide": 0,
            "current": {"text": "All" if current == "$__all" else current, "value": current},
            "options": [{"text": v, "value": v, "selected": v == current} for v in values]}


def constant_variable(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "type": "constant", "query": value, "hide": 2,
            "current": {"text": value, "value": value}}


def common_variables() -> list[dict[str, Any]]:
    """database (constant), table and resolution (hidden choosers), exporter."""
    return [
        constant_variable("database", DATABASE),
        query_variable("table", table_chooser_sql(), multi=False, hide=2),
        query_variable("resolution", resolution_sql(), multi=False, hide=2),
        query_variable("exporter", "SELECT DISTINCT ExporterName FROM ${database}.exporters "
                                   "WHERE ExporterName != '' ORDER BY ExporterName"),
    ]


ALERTS_ANNOTATION = {
    "name": "Alerts", "enable": True, "iconColor": "red", "datasource": CLICKHOUSE,
    "target": {"refId": "Alerts", "datasource": CLICKHOUSE, "editorType": "sql", "format": 1, "queryType": "table",
               "rawSql": ("SELECT toUnixTimestamp(Start) * 1000 AS time, "
                          "toUnixTimestamp(if(End = toDateTime(0), now(), End)) * 1000 AS timeEnd, "
                          "concat(Rule, ': ', Key, ' (', Measure, ' peak ', toString(round(Peak)), ')') AS text, "
                          "[Rule] AS tags FROM ${database}.alerts FINAL "
                          "WHERE Start <= $__toTime AND (End = toDateTime(0) OR End >= $__fromTime)")},
}
"""The alerts table as an annotation source: every dashboard shows alerts over its graphs."""


def dashboard(uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]],
              *, tags: Iterable[str] = (), time_from: str = "now-6h") -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": ["waxflow", *tags], "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": time_from, "to": "now"}, "refresh": "1m",
        "annotations": {"list": [ALERTS_ANNOTATION]}, "links": [
            {"type": "dashboards", "tags": ["waxflow"], "asDropdown": True, "title": "waxflow"}],
        "templating": {"list": variables}, "panels": panels,
    }


# --- the dashboards --------------------------------------------------------------------------

def traffic_overview() -> dict[str, Any]:
    condition = where(EXPORTER_FILTER)
    boundary = f"concat({text_of(col('InIfBoundary'))}, ' → ', {text_of(col('OutIfBoundary'))})"
    layout = Layout()
    layout.row("Traffic")
    for title, expression, unit in (
            ("Traffic by exporter", label("ExporterName"), "bps"),
            ("Packets by exporter", label("ExporterName"), "pps"),
            ("Traffic by boundary (input → output interface)", boundary, "bps"),
            ("Traffic by flow direction", label("FlowDirection"), "bps")):
        layout.add(traffic(title, series_sql(expression, unit, condition), unit), 12, 8)
    layout.row("Top")
    for name, title in (("SrcAS", "Top source AS"), ("DstAS", "Top destination AS"),
                        ("SrcCountry", "Top source countries"), ("DstCountry", "Top destination countries")):
        layout.add(bargauge(title, top_sql(label(name), "bps", condition), "bps"), 12, 9)
    layout.add(bargauge("Top protocols", top_sql(label("Proto"), "bps", condition), "bps"), 8, 9)
    for name, title in (("DstPort", "Top destination ports"), ("SrcPort", "Top source ports")):
        layout.add(bargauge(title, top_sql(port_label(name), "bps", condition, raw=True), "bps"), 8, 9)
    layout.row("Interfaces")
    interface = f"concat(ExporterName, ' ', {col('InIfName')})"
    layout.add(traffic("Traffic by input interface", series_sql(interface, "bps", condition), "bps"), 24, 8)
    layout.add(table("Input interfaces", interfaces_sql("In", condition), INTERFACE_UNITS), 24, 10)
    layout.add(table("Output interfaces", interfaces_sql("Out", condition), INTERFACE_UNITS), 24, 10)
    return dashboard("waxflow-overview", "waxflow / Traffic overview", layout.panels, common_variables(),
                     tags=["flows"])


def top_talkers() -> dict[str, Any]:
    condition = where(EXPORTER_FILTER)
    layout = Layout()
    for name, side in (("SrcAddr", "source"), ("DstAddr", "destination")):
        address = label(name, aggregated=False)
        layout.add(traffic(f"Top {side} addresses", series_sql(address, "bps", condition, raw=True), "bps"),
                   12, 9)
    for name, side in (("SrcAddr", "sources"), ("DstAddr", "destinations")):
        address = label(name, aggregated=False)
        layout.add(bargauge(f"Top {side}", top_sql(address, "bps", condition, raw=True, limit=20), "bps"),
                   12, 12)
    layout.add(table("Top conversations (source, destination, protocol, destination port)",
                     conversations_sql(condition), CONVERSATION_UNITS), 24, 14)
    return dashboard("waxflow-talkers", "waxflow / Top talkers and conversations", layout.panels,
                     common_variables(), tags=["flows"], time_from="now-1h")


def explorer() -> dict[str, Any]:
    filters = where(EXPORTER_FILTER, INTERFACE_FILTER, BOUNDARY_FILTER, PROVIDER_FILTER)
    dimension = text_of("${dimension}")
    variables = common_variables() + [
        query_variable("interface", "SELECT DISTINCT IfName FROM ${database}.exporters WHERE IfName != '' "
                                    "AND $__conditionalAll(ExporterName IN (${exporter:singlequote}), $exporter) "
                                    "ORDER BY IfName"),
        custom_variable("boundary", schema.BOUNDARIES),
        query_variable("provider", "SELECT DISTINCT IfProvider FROM ${database}.exporters "
                                   "WHERE IfProvider != '' ORDER BY IfProvider"),
        custom_variable("dimension", group_by_choices(), label_text="group by", multi=False,
                        default="ExporterName"),
        {"name": "filters", "type": "adhoc", "datasource": CLICKHOUSE, "hide": 0, "filters": []},
        # Scopes the ad-hoc filter keys to the aggregated columns (the plugin's convention).
        constant_variable("clickhouse_adhoc_query", f"{DATABASE}.flows_5m0s"),
    ]
    layout = Layout()
    layout.add(traffic("Traffic by $dimension", series_sql(dimension, "bps", filters, top=15), "bps"), 24, 10)
    layout.add(traffic("Packets by $dimension", series_sql(dimension, "pps", filters, top=15), "pps"), 12, 8)
    layout.add(bargauge("Top $dimension", top_sql(dimension, "bps", filters, limit=15), "bps"), 12, 8)
    layout.add(table("Input interfaces", interfaces_sql("In", filters), INTERFACE_UNITS), 24, 10)
    layout.add(table("Output interfaces", interfaces_sql("Out", filters), INTERFACE_UNITS), 24, 10)
    return dashboard("waxflow-explorer", "waxflow / Exporter and interface explorer", layout.panels, variables,
                     tags=["flows"])


def _rate(metric: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}[$__rate_interval]))"


# (title, unit, [(expression, legend)]); metric names are checked against the code's registry.
HEALTH_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("Inlet: datagrams received /s", "pps",
     ((_rate("waxflow_inlet_datagrams_total", "listener"), "{{listener}}"),)),
    ("Inlet: kernel drops /s (socket buffer full)", "pps",
     ((_rate("waxflow_inlet_kernel_drops_total", "listener"), "{{listener}}"),)),
    ("Inlet: datagrams discarded /s", "pps",
     ((_rate("waxflow_inlet_discarded_total", "listener, reason"), "{{listener}} {{reason}}"),
      (_rate("waxflow_inlet_kafka_discarded_total", "reason"), "kafka {{reason}}"))),
    ("Inlet → Kafka: produced, acknowledged, failed /s", "ops",
     ((_rate("waxflow_inlet_kafka_produced_total", "job"), "produced"),
      (_rate("waxflow_inlet_kafka_acked_total", "job"), "acknowledged"),
      (_rate("waxflow_inlet_kafka_failed_total", "reason"), "failed {{reason}}"))),
    ("Kafka: outlet consumer lag (messages)", "short",
     (("sum by (topic) (waxflow_kafka_consumer_lag)", "{{topic}}"),)),
    ("Outlet: messages read and flows decoded /s", "ops",
     ((_rate("waxflow_outlet_messages_total", "job"), "messages"),
      (_rate("waxflow_outlet_flows_total", "job"), "flows"),
      (_rate("waxflow_outlet_dropped_messages_total", "job"), "dropped messages"))),
    ("Decode errors /s", "ops",
     ((_rate("waxflow_decode_errors_total", "reason"), "{{reason}}"),)),
    ("ClickHouse: rows inserted /s", "ops",
     ((_rate("waxflow_clickhouse_rows_total", "job"), "rows"),
      (_rate("waxflow_clickhouse_batches_total", "job"), "batches"))),
    ("ClickHouse: insert latency", "s",
     (("histogram_quantile(0.5, sum by (le) (rate(waxflow_clickhouse_insert_seconds_bucket[$__rate_interval])))",
       "p50"),
      ("histogram_quantile(0.99, sum by (le) (rate(waxflow_clickhouse_insert_seconds_bucket[$__rate_interval])))",
       "p99"))),
    ("ClickHouse: insert errors and pending rows", "short",
     ((_rate("waxflow_clickhouse_errors_total", "reason"), "errors/s {{reason}}"),
      (_rate("waxflow_clickhouse_retries_total", "job"), "retries/s"),
      ("sum(waxflow_clickhouse_pending_rows)", "pending rows"))),
    ("SNMP cache: hits and misses /s", "ops",
     ((_rate("waxflow_snmp_cache_hits_total", "job"), "hits"),
      (_rate("waxflow_snmp_cache_misses_total", "job"), "misses"))),
    ("SNMP: requests and errors /s", "ops",
     ((_rate("waxflow_snmp_requests_total", "job"), "requests"),
      (_rate("waxflow_snmp_errors_total", "reason"), "errors {{reason}}"))),
    ("SNMP: flows held for metadata and released /s", "ops",
     ((_rate("waxflow_snmp_held_flows_total", "job"), "held"),
      (_rate("waxflow_snmp_released_flows_total", "outcome"), "released {{outcome}}"),
      (_rate("waxflow_snmp_breaker_opens_total", "job"), "breaker opens"))),
    ("HTTP API requests /s", "reqps",
     ((_rate("waxflow_api_requests_total", "endpoint, status"), "{{endpoint}} {{status}}"),
      (_rate("waxflow_api_errors_total", "reason"), "refused {{reason}}"))),
)


def pipeline_health() -> dict[str, Any]:
    layout = Layout()
    for title, unit, queries in HEALTH_PANELS:
        targets = [prom_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]
        layout.add(timeseries(title, targets, unit, stacked=False), 12, 8)
    return dashboard("waxflow-health", "waxflow / Pipeline health", layout.panels, [], tags=["health"],
                     time_from="now-1h")


DASHBOARDS = {
    "traffic-overview": traffic_overview,
    "top-talkers": top_talkers,
    "explorer": explorer,
    "pipeline-health": pipeline_health,
}


def render(builder) -> str:
    return json.dumps(builder(), indent=2, ensure_ascii=False) + "\n"
