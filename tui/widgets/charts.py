"""Throughput and probe-latency sparklines, each over a strip marking when a fault was active."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.widgets import Label, Sparkline


class Charts(Horizontal):
    """The two charts; the app sets the series, the sparklines are bound to them.

    `faults` holds 1 while any fault was active, 0 otherwise: under both charts 1 renders
    in the max (red) colour and 0 in the background colour (dashboard.tcss).
    """

    tput: var[list[float]] = var(lambda: [0.0])
    lat: var[list[float]] = var(lambda: [0.0])
    faults: var[list[float]] = var(lambda: [0.0])

    def compose(self) -> ComposeResult:
        with Vertical(classes="chart"):
            yield Label("acknowledged writes/s (probe + workload); red: a fault was active")
            yield Sparkline([0.0], id="tput").data_bind(data=Charts.tput)
            yield Sparkline([0.0], id="tput-faults", classes="faults").data_bind(data=Charts.faults)
        with Vertical(classes="chart"):
            yield Label("probe write latency ms; red: a fault was active")
            yield Sparkline([0.0], id="lat").data_bind(data=Charts.lat)
            yield Sparkline([0.0], id="lat-faults", classes="faults").data_bind(data=Charts.faults)
