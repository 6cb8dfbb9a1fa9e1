"""The run view: six panes over one recording, a shared step cursor and the timeline."""

from __future__ import annotations

from typing import Any

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.widgets import Footer, OptionList
from textual.widgets.option_list import Option

from workstation.app.data import RunData, downsample, heatmap, read_columns
from workstation.app.screens.stepping import Pane, StepScreen
from workstation.app.widgets.gatebars import GateBars
from workstation.app.widgets.plot import PALETTE, Heatmap, Pending, Series, StepPlot, TimePlot
from workstation.app.widgets.timeline import Timeline


def curves(run: RunData, paths: dict[str, str], width: int) -> tuple[int, list[Series]]:
    """Loader payload: one :class:`Series` per named per-step path, summarised for ``width`` columns."""
    n = run.n_rows
    return n, [
        Series(name, read_columns(run.rec, path, width, n), PALETTE[i % len(PALETTE)])
        for i, (name, path) in enumerate(paths.items())
    ]


def ratio_series(run: RunData, diagnostics: Any, width: int) -> tuple[int, list[Series]]:
    """Loader payload: each gate set's gate/prompt gradient ratio from the analyses' diagnostics."""
    if diagnostics is None:
        raise Pending("computing collapse diagnostics…")
    return run.n_rows, [
        Series(name, downsample(gs.ratio, run.rows_of_steps(gs.steps), run.n_rows, width), PALETTE[i % len(PALETTE)])
        for i, (name, gs) in enumerate(diagnostics.gate_sets.items())
    ]


class RunScreen(StepScreen):
    """One recording: losses & accuracy, gradient norms, gate/prompt ratio, gate heatmap, gate bars, events."""

    BINDINGS = [Binding("g", "next_gate_set", "gate set", show=False)]

    def __init__(self, run: RunData) -> None:
        super().__init__([run])
        self.run = run
        self.gate_set = run.gate_sets[0] if run.gate_sets else ""

    def compose(self) -> ComposeResult:
        run = self.run
        with Grid(id="panes"):
            yield Pane(
                "losses · accuracy",
                TimePlot(lambda w, h: curves(run, run.loss_paths, w), id="losses"),
                TimePlot(self._accuracy, id="accuracy"),
                id="losses-pane",
            )
            yield Pane(
                "gradient norms (log)",
                TimePlot(lambda w, h: curves(run, run.grad_paths, w), log=True, id="grads"),
                id="grads-pane",
            )
            yield Pane(
                "gate / prompt gradient ratio (log)",
                TimePlot(lambda w, h: ratio_series(run, self.diagnostics[0], w), log=True, id="ratio"),
                id="ratio-pane",
            )
            yield Pane("gate value × step", Heatmap(self._heatmap, id="heatmap"), id="heatmap-pane")
            yield Pane("gates at cursor", GateBars(id="gates"), focusable=False, id="gates-pane")
            yield Pane("events", OptionList(id="events"), focusable=False, id="events-pane")
        yield Timeline(id="timeline")
        yield Footer()

    def _titles(self) -> None:
        self.query_one("#heatmap-pane", Pane).border_title = f"{self.gate_set or 'no gates'} value × step"
        self.query_one("#gates-pane", Pane).border_title = f"{self.gate_set or 'no gates'} at cursor: σ and σ'"

    def _accuracy(self, width: int, height: int) -> tuple[int, list[Series]]:
        cols = self.run.accuracy_columns(width)
        return self.run.n_rows, [Series(k, v, PALETTE[i + 2]) for i, (k, v) in enumerate(cols.items())]

    def _heatmap(self, width: int, height: int) -> tuple[int, np.ndarray | None]:
        if not self.gate_set:
            return self.run.n_rows, None
        return self.run.n_rows, heatmap(self.run.rec, self.gate_set, width, 2 * height, n_rows=self.run.n_rows)

    def on_mount(self) -> None:  # StepScreen.on_mount runs too (Textual calls each class's handler)
        self._fill_events()
        self._titles()
        if not self.gate_set:
            self.query_one("#ratio", TimePlot).note = "no gates recorded"

    def on_diagnosed(self, index: int) -> None:
        result = self.diagnostics[0]
        verdicts = ", ".join(f"{name}: {gs.verdict}" for name, gs in result.gate_sets.items())
        self.query_one("#ratio-pane", Pane).border_title = f"gate / prompt gradient ratio (log) · {verdicts}"
        self._fill_events()
        self.query_one("#ratio", TimePlot).reload()

    def _fill_events(self) -> None:
        events = self.query_one("#events", OptionList)
        events.clear_options()
        events.add_options(Option(f"{m.step:>7,}  {m.kind}  {m.label}") for m in self.markers)
        self.query_one("#events-pane", Pane).border_title = f"events ({len(self.markers)})"

    def on_option_list_option_selected(self, message: OptionList.OptionSelected) -> None:
        self.action_jump(self.markers[message.option_index].row)

    def figure_gate_set(self) -> str | None:
        return self.gate_set or None

    def action_next_gate_set(self) -> None:
        sets = self.run.gate_sets
        if len(sets) > 1:
            self.gate_set = sets[(sets.index(self.gate_set) + 1) % len(sets)]
            self._titles()
            self.query_one(Heatmap).reload()
            self.show_row(self.row)

    def show_row(self, row: int) -> None:
        if not self.is_mounted:
            return
        for plot in self.query(StepPlot):
            plot.cursor = row
        timeline = self.query_one(Timeline)
        timeline.set_run(self.n_rows, self.markers)
        timeline.cursor = row
        timeline.status = self.status()
        if self.gate_set and self.n_rows:
            self.query_one(GateBars).show(self.run.gate_row(self.gate_set, row), self.run.gate_labels(self.gate_set))

    def reload(self) -> None:
        for plot in self.query(StepPlot):
            plot.reload()
        self._fill_events()
