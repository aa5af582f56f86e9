"""The `waxflow` command: configuration checks, migrations, the local broker, and the tools."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console

from flows.settings import ConfigError, Settings, load_settings

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
                err_console.print(f"[bold red]configuration error[/]\n{err}", highlight=False)
                sys.exit(2)
        return self._settings


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", type=click.Path(dir_okay=False), default=None,
              help="configuration file (default: $WAXFLOW_CONFIG, else ./dataflows.yaml)")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str) -> None:
    """waxflow: NetFlow/IPFIX/sFlow collector on Bytewax, Kafka and ClickHouse."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(config)


# --- config ------------------------------------------------------------------------------------

@main.group()
def config() -> None:
    """Check or show the configuration."""


@config.command("check")
@click.option("--dump", is_flag=True, help="print the resolved configuration (file + environment)")
@pass_context
def config_check(ctx: Context, dump: bool) -> None:
    """Validate the configuration; exit non-zero naming each bad key."""
    settings = ctx.settings
    if dump:
        click.echo(json.dumps(settings.dump(), indent=2))
    else:
        click.echo("configuration OK")


@config.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) that the README carries."""
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
    """Run a read-only SQL query against the store (the embedded store must not be in use)."""
    from connectors.clickhouse import read_only_query

    try:
        columns, rows = read_only_query(ctx.settings.clickhouse, sql)
    except Exception as err:  # the store's own message says what is wrong with the query
        err_console.print(f"[bold red]query failed:[/] {err}", highlight=False)
        sys.exit(1)
    if fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(dict(zip(columns, row)), default=str))
        return
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)


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


from flows.decode.cli import decode as _decode_command
main.add_command(_decode_command)


if __name__ == "__main__":  # pragma: no cover
    main()
