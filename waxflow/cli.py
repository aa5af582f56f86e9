"""The `waxflow` command: configuration checks, migrations, the local broker, and the tools."""

from __future__ import annotations

import json
import sys
from datetime import UTC
from pathlib import Path

import click
from rich.console import Console

from flows.settings import ConfigError, Logging, Settings, load_settings
from waxflow.process import configure_logging, set_level_override

err_console = Console(stderr=True)


class Context:
    def __init__(self, config: str | None) -> None:
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The configuration, loaded on first use; a bad one ends the command naming the key."""
        if self._settings is None:
            try:
                self._settings = load_settings(self.config)
            except ConfigError as err:
                from rich.markup import escape

                err_console.print(f"[bold red]configuration error[/]\n{escape(str(err))}", highlight=False,
                                  soft_wrap=True)
                sys.exit(2)
            configure_logging(self._settings.logging)
        return self._settings


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(dir_okay=False), default=None,
              help="configuration file (default: $WAXFLOW_CONFIG, else ./dataflows.yaml)")
@click.option("--log-level", default=None,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="override logging.level, for this command and the dataflows it starts")
@click.version_option(package_name="waxflow", message="waxflow %(version)s")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None) -> None:
    """waxflow: NetFlow/IPFIX/sFlow collector on Bytewax, Kafka and ClickHouse."""
    set_level_override(log_level)
    # Until the configuration is read (its logging section then takes over), and for the
    # commands that need none.
    configure_logging(Logging(level=log_level.upper() if log_level else "INFO"))
    ctx.obj = Context(config)


# --- config ------------------------------------------------------------------------------------

@main.group()
def config() -> None:
    """Check or show the configuration."""


@config.command("check")
@click.option("--dump", is_flag=True, help="print the resolved configuration (file + environment)")
@pass_context
def config_check(ctx: Context, dump: bool) -> None:
    """Validate the configuration and what it points at (files, addresses, directories, Kafka
    client settings); exit 2 naming each bad key."""
    from connectors.config_checks import environment_problems

    settings = ctx.settings
    problems = environment_problems(settings)
    if problems:
        click.echo("configuration error\n" + "\n".join(f"  {p}" for p in problems), err=True)
        sys.exit(2)
    if dump:
        click.echo(json.dumps(settings.dump(), indent=2))
    else:
        click.echo("configuration OK")


@config.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) that docs/configuration.md carries."""
    from flows.settings import reference_markdown

    click.echo(reference_markdown(), nl=False)


# --- clickhouse --------------------------------------------------------------------------------

@main.command()
@pass_context
def migrate(ctx: Context) -> None:
    """Create or update the ClickHouse tables, views and dictionaries."""
    from connectors.clickhouse import migrate as run_migrations

    cfg = ctx.settings.clickhouse
    steps = run_migrations(cfg)
    if not steps:
        click.echo(f"{cfg.database}: up to date, nothing to do")
    for step in steps:
        click.echo(f"applied: {step}")


@main.command()
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@pass_context
def query(ctx: Context, sql: str, fmt: str) -> None:
    """Run a read-only SQL query: through the running stack's API, else straight on the store
    (the same guard and limits either way)."""
    from connectors.http import sql_result

    body = _look_up(ctx, "/api/v0/query", None, sql.encode(),
                    lambda session: sql_result(session, ctx.settings, sql), kind="user")
    _print_rows(body["columns"], body["rows"], fmt)
    if body.get("truncated"):
        err_console.print(f"[yellow]truncated to api.max_rows = {ctx.settings.api.max_rows} rows[/]",
                          highlight=False)


# --- local broker ------------------------------------------------------------------------------

@main.group()
def broker() -> None:
    """The local Kafka-protocol broker (tansu) for development."""


def _local_broker(ctx: Context, port: int | None):
    from connectors.broker import from_bootstrap

    settings = ctx.settings
    return from_bootstrap(settings.kafka.brokers[0], Path(settings.data_dir), port)


_port_option = click.option("--port", type=click.IntRange(1, 65535), default=None,
                            help="port (default: the one in kafka.brokers)")


@broker.command("start")
@_port_option
@pass_context
def broker_start(ctx: Context, port: int | None) -> None:
    """Start the broker in the background and wait until it answers."""
    from connectors.broker import BrokerError

    local = _local_broker(ctx, port)
    try:
        pid = local.start()
    except BrokerError as err:
        err_console.print(f"[bold red]broker:[/] {err}", highlight=False)
        sys.exit(1)
    click.echo(f"broker running on {local.bootstrap} (pid {pid}, log {local.logfile})")


@broker.command("stop")
@_port_option
@pass_context
def broker_stop(ctx: Context, port: int | None) -> None:
    """Stop the broker started by `broker start`."""
    local = _local_broker(ctx, port)
    click.echo("broker stopped" if local.stop() else "no broker was running")


@broker.command("status")
@_port_option
@pass_context
def broker_status(ctx: Context, port: int | None) -> None:
    """Say whether the broker runs and answers; exit 1 when it does not answer."""
    status = _local_broker(ctx, port).status()
    click.echo(json.dumps(status))
    sys.exit(0 if status["answering"] else 1)

# --- dataflows ---------------------------------------------------------------------------------

@main.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("dataflow", type=click.Choice(["inlet", "outlet"]))
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--recovery/--no-recovery", default=True, show_default=True,
              help="snapshot state to <data_dir>/recovery/<dataflow> (created when missing)")
@click.option("-s", "--snapshot-seconds", type=click.FloatRange(min=0.1), default=30, show_default=True)
@click.option("-i", "--process-id", type=int, default=None, help="this process's index (multi-process)")
@click.option("-a", "--addresses", default=None, help='all processes, "host:port;host:port"')
@pass_context
def run(ctx: Context, dataflow: str, workers: int, recovery: bool, snapshot_seconds: float,
        process_id: int | None, addresses: str | None) -> None:
    """Run the inlet or outlet dataflow, preparing its recovery store first."""
    import os

    from connectors.launcher import LaunchError, dataflow_argv, ensure_recovery_store, recovery_dir

    settings = ctx.settings
    try:
        store = ensure_recovery_store(recovery_dir(settings.data_dir, dataflow)) if recovery else None
        argv = dataflow_argv(dataflow, workers=workers, recovery=store, snapshot_seconds=snapshot_seconds,
                             process_id=process_id, addresses=addresses.split(";") if addresses else None)
    except LaunchError as err:
        err_console.print(f"[bold red]cannot start {dataflow}[/]: {err}", highlight=False)
        sys.exit(2)
    if ctx.config:
        os.environ["WAXFLOW_CONFIG"] = ctx.config
    os.execv(argv[0], argv)


# --- the main job: waxflow up, demo exporter, look-ups ---------------------------------------------

def _look_up(ctx: Context, path: str, params: dict[str, str] | None, body: bytes | None, direct,
             kind: str = "api"):
    """Ask the running outlet's API (it owns the embedded store); when nothing answers, run
    `direct(session)` straight on the store, on the same kind of read-only session the API uses.
    Exits 1 with the reason on a refusal."""
    from rich.markup import escape

    from connectors.http import APIError, APIUnavailable, call_api

    settings = ctx.settings
    try:
        return call_api(settings, path, params, body)
    except APIError as err:
        err_console.print(f"[bold red]refused ({err.reason}):[/] {escape(str(err))}", highlight=False)
        sys.exit(1)
    except APIUnavailable:
        pass
    from connectors.http import ReadOnlySession
    from flows.api import QueryError

    try:
        return direct(ReadOnlySession(settings, kind))
    except (QueryError, APIError) as err:
        err_console.print(f"[bold red]refused ({err.reason}):[/] {escape(str(err))}", highlight=False)
        sys.exit(1)
    except Exception as err:  # the store's own message says what is wrong
        err_console.print(f"[bold red]query failed:[/] {escape(str(err))}", highlight=False)
        sys.exit(1)


def _print_rows(columns: list[str], rows: list[list], fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(dict(zip(columns, row)), default=str))
        return
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)


@main.command()
@click.option("--by", "dimensions", default="SrcAS", show_default=True,
              help="dimension(s), comma-separated (SrcAS, InIfName, ExporterName, SrcCountry, ...)")
@click.option("--last", default="15m", show_default=True, help="time range ending now (5m, 1h, 7d)")
@click.option("--limit", type=click.IntRange(1, 50), default=10, show_default=True)
@click.option("--filter", "filter_", default="", help="e.g. \"InIfBoundary = 'external' AND Proto = 6\"")
@click.option("--unit", type=click.Choice(["bps", "pps"]), default="bps", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@pass_context
def top(ctx: Context, dimensions: str, last: str, limit: int, filter_: str, unit: str, fmt: str) -> None:
    """The top talkers over the last minutes: through the running stack's API, else the store."""
    from connectors.http import flows_result
    from connectors.up import human_rate
    from flows.api import parse_flows_query

    params = {"from": f"-{last}", "dimensions": dimensions, "limit": str(limit), "points": "1",
              "filter": filter_, "unit": unit}
    body = _look_up(ctx, "/api/v0/flows", params, None,
                    lambda session: flows_result(session, ctx.settings, parse_flows_query(params)))
    total = sum(s["average"] for s in body["series"]) or 1.0
    columns = [*body["dimensions"], unit, "share"]
    rows = [[*(s["dimensions"] + [""] * (len(body["dimensions"]) - len(s["dimensions"]))),
             human_rate(s["average"], unit) if fmt == "table" else s["average"],
             f"{100 * s['average'] / total:.1f}%"] for s in body["series"]]
    _print_rows(columns, rows, fmt)


@main.group()
def alerts() -> None:
    """Detection rules: when they fired, and when they would have."""


@alerts.command("backtest")
@click.option("--rule", required=True, help="a rule's name (alerts.rules, or a shipped default)")
@click.option("--from", "start", default="-1d", show_default=True, help="start: -30d, RFC 3339, unix seconds")
@click.option("--to", "end", default="now", show_default=True)
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=None,
              help="try another threshold than the rule's")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@pass_context
def alerts_backtest(ctx: Context, rule: str, start: str, end: str, threshold: float | None, fmt: str) -> None:
    """When RULE would have fired over the stored flows (raw flows, so within their TTL): the
    live detector's own code fed from the store. Through the running stack's API, else the store."""
    from connectors.http.queries import backtest_result
    from flows.alerts_api import backtest_query

    params = {"rule": rule, "from": start, "to": end, **({"threshold": repr(threshold)} if threshold else {})}
    rules = {r.name: r.rule() for r in ctx.settings.alerts.all_rules()}
    body = _look_up(ctx, "/api/v0/alerts/backtest", params, None,
                    lambda session: backtest_result(session, ctx.settings, backtest_query(params, rules)))
    when = _when if fmt == "table" else (lambda seconds: seconds)
    columns = ["kind", "key", "start", "end", "peak", "top_source_ports", "top_protocols"]
    rows = [[e["kind"], e["key"], when(e["start"]), when(e["end"]), e["peak"], e["top_source_ports"],
             e["top_protocols"]] for e in body["events"]]
    _print_rows(columns, rows, fmt)
    starts = sum(1 for e in body["events"] if e["kind"] == "start")
    err_console.print(f"{body['rule']} (threshold {body['threshold']:g}): {starts} alert(s) from "
                      f"{_when(body['from'])} to {_when(body['to'])}", highlight=False)


@alerts.command("list")
@click.option("--from", "start", default="-1d", show_default=True)
@click.option("--active", is_flag=True, help="only alerts still on")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="table", show_default=True)
@pass_context
def alerts_list(ctx: Context, start: str, active: bool, fmt: str) -> None:
    """Alerts that were on since --from (the alerts table)."""
    from connectors.http.queries import alerts_result
    from flows.alerts_api import alerts_query

    params = {"from": start, **({"active": "1"} if active else {})}
    body = _look_up(ctx, "/api/v0/alerts", params, None,
                    lambda session: {"alerts": alerts_result(session, ctx.settings, alerts_query(params))})
    when = _when if fmt == "table" else (lambda seconds: seconds)
    columns = ["rule", "key", "start", "end", "peak", "action"]
    _print_rows(columns, [[a["rule"], a["key"], when(a["start"]), when(a["end"]), a["peak"], a["action"]]
                          for a in body["alerts"]], fmt)


def _when(seconds: int | None) -> str:
    from datetime import datetime

    return "" if not seconds else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


@main.command("demo-exporter")
@click.option("--rate", type=click.FloatRange(0.1, 1_000_000), default=500, show_default=True,
              help="flows per second over all routers (at the daily peak)")
@click.option("--duration", type=click.FloatRange(min=0), default=None, help="seconds (default: until stopped)")
@click.option("--seed", type=int, default=None, help="random seed (reproducible traffic)")
@click.option("--flat", is_flag=True, help="constant rate, no day/night shape")
@click.option("--target", default=None, help="inlet host (default: the listeners' addresses on this machine)")
@click.option("--router", "routers", multiple=True, metavar="NAME",
              help="run only this router, e.g. edge1.par (repeatable; default: all three); the rate is theirs")
@click.option("--attack", type=click.Choice(["amplification", "syn", "carpet"]), default=None,
              help="mix an attack on the first router's customers into the traffic")
@click.option("--attack-rate", type=click.FloatRange(0.1, 100_000), default=50, show_default=True,
              help="the attack's sampled flows per second")
@pass_context
def demo_exporter(ctx: Context, rate: float, duration: float | None, seed: int | None, flat: bool,
                  target: str | None, routers: tuple[str, ...], attack: str | None, attack_rate: float) -> None:
    """Simulated routers exporting NetFlow v9, IPFIX and sFlow to the inlet's listeners."""
    import signal
    import threading

    from connectors.demo_exporter import DemoError, DemoExporter, targets

    try:
        exporter = DemoExporter(targets(ctx.settings, target, routers), rate, seed=seed, shape=not flat,
                                attack=attack, attack_rate=attack_rate)
    except DemoError as err:
        err_console.print(f"[bold red]demo exporter:[/] {err}", highlight=False)
        sys.exit(2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for each in exporter.targets:
        click.echo(f"{each.router.name} ({exporter.agents[each.router.name]}) → {each.router.protocol} "
                   f"{each.address[0]}:{each.address[1]}")
    exporter.run(stop, duration)
    exporter.close()
    click.echo(f"sent {exporter.sent_flows} flows in {exporter.sent_datagrams} datagrams")


@main.command()
@click.option("--demo", is_flag=True, help="also run the demo exporter, with its routers' names and networks")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="workers of the inlet and of the outlet")
@click.option("--demo-rate", type=click.FloatRange(1, 1_000_000), default=500, show_default=True,
              help="demo flows per second")
@pass_context
def up(ctx: Context, demo: bool, workers: int, demo_rate: float) -> None:
    """Run the whole collector: local broker, outlet (store + HTTP API), inlet, with a live status."""
    from connectors.up import run_up

    sys.exit(run_up(ctx.settings, workers=workers, demo=demo, demo_rate=demo_rate))


# --- grafana -----------------------------------------------------------------------------------

@main.command("dashboards")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("compose/grafana/dashboards"), show_default=True,
              help="directory the dashboard JSON files are written to")
def dashboards_command(output: Path) -> None:
    """Write the Grafana dashboards generated from the flow schema."""
    from flows.dashboards import DASHBOARDS, render

    output.mkdir(parents=True, exist_ok=True)
    for name, builder in DASHBOARDS.items():
        path = output / f"{name}.json"
        path.write_text(render(builder))
        click.echo(f"wrote {path}")


@main.command("demo-block")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("compose/dataflows.yaml"), show_default=True,
              help="the compose stack's configuration, whose demo block is rewritten")
def demo_block(path: Path) -> None:
    """Regenerate the demo block (routers, networks, classifiers) of the compose configuration
    from flows/demo.py."""
    from flows.demo import with_compose_block

    path.write_text(with_compose_block(path.read_text()))
    click.echo(f"wrote the demo block of {path}")


# --- eBPF -----------------------------------------------------------------------------------------

@main.group()
def bpf() -> None:
    """The eBPF socket maps the inlet pins in bpffs."""


@bpf.command("clean")
@click.option("--bpffs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory of the pinned maps (default: inlet.bpffs)")
@pass_context
def bpf_clean(ctx: Context, bpffs: Path | None) -> None:
    """Remove the pinned socket maps no running inlet uses (a stopped inlet removes its own;
    a killed one leaves them behind)."""
    from bpf import loader

    directory = bpffs or ctx.settings.inlet.bpffs
    try:
        removed, kept = loader.clean(directory)
    except OSError as err:
        err_console.print(f"[bold red]bpf clean:[/] {directory}: {err}", highlight=False)
        sys.exit(1)
    for path in removed:
        click.echo(f"removed {path}")
    for path in kept:
        click.echo(f"kept {path} (in use, or not a socket map)")
    click.echo(f"{len(removed)} removed, {len(kept)} kept")


from waxflow.decode_cli import decode as _decode_command  # noqa: E402  (it needs `main` defined first)

main.add_command(_decode_command)


if __name__ == "__main__":  # pragma: no cover
    main()
