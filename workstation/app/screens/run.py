"""The run view: six panes over one recording, a shared step cursor and the timeline."""

from __future__ import annotations

from typing import Any

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.message import Message
from textual.widgets import Footer, OptionList
from textual.widgets.option_list import Option

from recorders.format import gate_path
from recorders.format.errors import RecordingError
from workstation.app.data import RunData, downsample, heatmap, read_columns
from workstation.app.screens.stepping import Pane, StepScreen
from workstation.app.widgets.gatebars import GateBars
from workstation.app.widgets.plot import PALETTE, Heatmap, Pending, Series, StepPlot, TimePlot, fmt
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


def factor_series(run: RunData, gate_set: str, width: int) -> tuple[int, list[Series]]:
    """Loader payload: one gate set's ratio factors 1 − σ, ‖u‖, |cos| (geometric means over its gates) and their
    product, the ratio (:mod:`analyses.mechanism`)."""
    from analyses.figures import run_curves

    curves = run_curves(run.rec, "factors", max_points=4096, gate_set=gate_set) if gate_set else {}
    if not any(np.isfinite(v).any() for _, v in curves.values()):
        raise Pending(f"{gate_set or 'no gates'}: ratio factors not recorded (the file predates them)")
    return run.n_rows, [
        Series(label, downsample(v, run.rows_of_steps(x.astype(np.int64)), run.n_rows, width), PALETTE[i])
        for i, (label, (x, v)) in enumerate(curves.items())
    ]


class RatioPane(Pane):
    """The gate/prompt ratio pane; ``x`` toggles between the ratio of every gate set and the shown set's three
    factors with their product (log axis)."""

    BINDINGS = [Binding("x", "toggle_factors", "ratio/factors")]

    class Toggled(Message):
        """The pane switched between the ratio and its factors."""

    def __init__(self, title: str, *children: object, id: str | None = None) -> None:
        super().__init__(title, *children, id=id)
        self.factors = False

    def action_toggle_factors(self) -> None:
        self.factors = not self.factors
        self.post_message(self.Toggled())


class RunScreen(StepScreen):
    """One recording: losses & accuracy, gradient norms, gate/prompt ratio, gate heatmap, gate bars, events."""

    BINDINGS = [Binding("g", "next_gate_set", "gate set", show=False)]

    def __init__(self, run: RunData) -> None:
        super().__init__([run])
        self.run = run
        self.gate_set = run.gate_sets[0] if run.gate_sets else ""
        self._movement: dict[str, Any] = {}  # gate set → analyses.mechanism.GateMovement (None while loading)

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
            self.ratio_pane = RatioPane(
                "gate / prompt gradient ratio (log)", TimePlot(self._ratio, log=True, id="ratio"), id="ratio-pane"
            )
            yield self.ratio_pane
            yield Pane("gate value × step", Heatmap(self._heatmap, id="heatmap"), id="heatmap-pane")
            yield Pane("gates at cursor", GateBars(id="gates"), focusable=False, id="gates-pane")
            yield Pane("events", OptionList(id="events"), focusable=False, id="events-pane")
        yield Timeline(id="timeline")
        yield Footer()

    def _titles(self) -> None:
        self.query_one("#heatmap-pane", Pane).border_title = f"{self.gate_set or 'no gates'} value × step"
        self.query_one("#gates-pane", Pane).border_title = f"{self.gate_set or 'no gates'} at cursor: σ and σ'"

    def _ratio(self, width: int, height: int) -> tuple[int, list[Series]]:
        if self.ratio_pane.factors:
            return factor_series(self.run, self.gate_set, width)
        return ratio_series(self.run, self.diagnostics[0], width)

    def _ratio_title(self) -> str:
        if self.ratio_pane.factors:
            return f"{self.gate_set or 'no gates'} ratio = (1−σ)·‖u‖·|cos| (log) · x: ratio"
        result = self.diagnostics[0]
        verdicts = ", ".join(
            f"{name}: {gs.verdict}" + (f" from step {gs.onset_step}" if gs.onset_step is not None else "")
            for name, gs in (result.gate_sets.items() if result else ())
        )
        return "gate / prompt gradient ratio (log)" + (f" · {verdicts}" if verdicts else "")

    def on_ratio_pane_toggled(self, message: RatioPane.Toggled) -> None:
        self.ratio_pane.border_title = self._ratio_title()
        self.query_one("#ratio", TimePlot).reload()

    def _accuracy(self, width: int, height: int) -> tuple[int, list[Series]]:
        cols = self.run.accuracy_columns(width)
        return self.run.n_rows, [Series(k, v, PALETTE[i + 2]) for i, (k, v) in enumerate(cols.items())]

    def _heatmap(self, width: int, height: int) -> tuple[int, np.ndarray | None]:
        if not self.gate_set:
            return self.run.n_rows, None
        return self.run.n_rows, heatmap(self.run.rec, self.gate_set, width, 2 * height, n_rows=self.run.n_rows)

    def on_mount(self) -> None:  # StepScreen.on_mount runs too (Textual calls each class's handler)
        if self.run.unreadable:
            self.notify(f"{self.run.rec.path.name}: {self.run.unreadable}", severity="warning", timeout=10)
        self._fill_events()
        self._titles()
        if not self.gate_set:
            self.query_one("#ratio", TimePlot).note = "no gates recorded"

    def on_diagnosed(self, index: int) -> None:
        self.ratio_pane.border_title = self._ratio_title()
        self._fill_events()
        self.query_one("#ratio", TimePlot).reload()

    def _fill_events(self) -> None:
        events = self.query_one("#events", OptionList)
        events.clear_options()
        events.add_options(Option(f"{m.step:>7,}  {m.kind}  {m.label}") for m in self.markers)
        damaged = " · recorded events unreadable" if self.run.rec.is_damaged("events/step") else ""
        self.query_one("#events-pane", Pane).border_title = f"events ({len(self.markers)}){damaged}"

    def on_option_list_option_selected(self, message: OptionList.OptionSelected) -> None:
        self.action_jump(self.markers[message.option_index].row)

    def figure_kind(self) -> str | None:
        kind = super().figure_kind()
        return "factors" if kind == "ratio" and self.ratio_pane.factors and self.focused is self.ratio_pane else kind

    def figure_gate_set(self) -> str | None:
        return self.gate_set or None

    def action_next_gate_set(self) -> None:
        sets = self.run.gate_sets
        if len(sets) > 1:
            self.gate_set = sets[(sets.index(self.gate_set) + 1) % len(sets)]
            self._titles()
            self.query_one(Heatmap).reload()
            if self.ratio_pane.factors:
                self.on_ratio_pane_toggled(RatioPane.Toggled())
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
        if self.gate_set and self.n_rows and not self.run.rec.is_damaged(gate_path(self.gate_set, "value")):
            try:
                gates = self.run.gate_row(self.gate_set, row)
            except RecordingError:  # found damaged now: named in the status line from here on
                return
            self._add_movement(gates, row)
            self.query_one(GateBars).show(gates, self.run.gate_labels(self.gate_set))

    # ------------------------------------------------------------ movement: gradient vs decay at the cursor
    def _add_movement(self, gates: dict[str, np.ndarray], row: int) -> None:
        """Add the shown gate set's cumulative movement at ``row`` (decay-only and the rest: static logits or the
        instance bias) to ``gates`` and the pane's subtitle; computed once per gate set in a worker."""
        pane = self.query_one("#gates-pane", Pane)
        movement = self._movement.get(self.gate_set)
        if movement is None:
            pane.border_subtitle = ""
            if self.gate_set not in self._movement:
                self._movement[self.gate_set] = None
                self._load_movement(self.gate_set)
            return
        part = movement.parts["logit" if "logit" in movement.parts else "bias"]
        if row >= len(part.decay) or not np.isfinite(part.decay[row]).any():
            pane.border_subtitle = "movement not recorded"
            return
        gates["decay"], gates["rest"] = part.decay[row], part.rest[row]
        pane.border_subtitle = (
            f"Δ at cursor: grad {fmt(float(np.mean(np.abs(part.rest[row]))))} / "
            f"decay {fmt(float(np.mean(np.abs(part.decay[row]))))}"
        )

    @work(thread=True, exit_on_error=False, group="movement")
    def _load_movement(self, gate_set: str) -> None:
        from analyses.mechanism import gate_movement

        spec = self.run.rec.gate_sets[gate_set]
        try:
            movement = gate_movement(self.run.rec, spec)
        except RecordingError as exc:  # a damaged part: say so, keep the pane without a movement subtitle
            self.app.call_from_thread(self.notify, f"movement of {gate_set}: {exc}", severity="warning")
            return
        self.app.call_from_thread(self._movement_loaded, gate_set, movement)

    def _movement_loaded(self, gate_set: str, movement: Any) -> None:
        self._movement[gate_set] = movement
        self.show_row(self.row)

    def reload(self) -> None:
        self._movement.clear()  # the file grew: movement is recomputed for the new rows
        for plot in self.query(StepPlot):
            plot.reload()
        self._fill_events()
