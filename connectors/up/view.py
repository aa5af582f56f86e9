"""The terminal view of `waxflow up`: a live panel on a terminal, a line every 10 s otherwise."""

from __future__ import annotations

from connectors.http import api_base
from connectors.up.monitor import Monitor, Status
from flows.settings import Settings


def human_rate(value: float, unit: str = "") -> str:
    """1234567 → `1.23 M` + unit."""
    for size, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}".rstrip()


def render(status: Status, settings: Settings, demo: bool):
    """The live view: counters on top, the top-5 tables below."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    figures = Table.grid(padding=(0, 3))
    figures.add_row("flows/s received", f"{status.received:,.0f}", "datagrams/s", f"{status.datagrams:,.0f}",
                    "Kafka lag", f"{status.lag:,.0f} msgs")
    figures.add_row("rows/s stored", f"{status.stored:,.0f}", "kernel drops", f"{status.kernel_drops:,.0f}",
                    "decode errors", f"{status.decode_errors:,.0f}")
    tops = Table.grid(padding=(0, 2))
    columns = []
    for title, _ in Monitor.TOP:
        table = Table(title=f"top {title} (5 min)", show_edge=False, title_justify="left")
        table.add_column(title)
        table.add_column("bps", justify="right")
        for name, value in status.top.get(title, [])[:6]:
            table.add_row(name[:38], human_rate(value))
        columns.append(table)
    tops.add_row(*columns)
    warning = "" if status.outlet_answers else "the outlet's /metrics do not answer · "
    footer = (f"{warning}console {api_base(settings)}/ · `waxflow top --by SrcAS` · "
              f"{status.rows_total:,.0f} rows stored · Ctrl-C stops")
    title = "waxflow up" + (" --demo" if demo else "")
    return Panel(Group(figures, "", tops, "", footer), title=title)


def line(status: Status) -> str:
    """One status line (rates over the monitor's sliding window)."""
    prefix = "" if status.outlet_answers else "outlet not answering · "
    return (f"{prefix}flows/s {status.received:,.0f} · rows/s {status.stored:,.0f} · lag {status.lag:,.0f} · "
            f"kernel drops {status.kernel_drops:,.0f} · decode errors {status.decode_errors:,.0f} · "
            f"rows {status.rows_total:,.0f}")
