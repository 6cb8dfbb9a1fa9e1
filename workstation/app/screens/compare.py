"""Compare 2–4 recordings side by side with one cursor, synced by step or by fraction of training."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer

from recorders.format.errors import RecordingError
from workstation.app.data import RunData, distinguishing_key, downsample, heatmap
from workstation.app.screens.run import curves
from workstation.app.screens.stepping import Pane, StepScreen
from workstation.app.widgets.gatebars import GateBars
from workstation.app.widgets.plot import PALETTE, Heatmap, Pending, Series, StepPlot, TimePlot
from workstation.app.widgets.timeline import Timeline

OVERLAY_ROWS = 1_000_000  # the overlay's x axis in fraction mode: fraction × this


class CompareScreen(StepScreen):
    """Columns of per-run panes (gradient norms, heatmap, gate bars) under one plot of every run's gate ratio.

    The cursor moves the reference run (the first); each other run shows the row at the same step
    (``sync="step"``) or the same fraction of its rows (``sync="fraction"``); f toggles. Each run shows one of
    its gate sets (``shown_sets[i]``, "" without gates) in its heatmap, gate bars and overlay curve; g moves every
    run to its next gate set.
    """

    BINDINGS = [
        Binding("f", "toggle_sync", "sync step/fraction"),
        Binding("g", "next_gate_set", "gate set", show=False),
    ]

    def __init__(self, runs: Sequence[RunData], *, sync: str = "step") -> None:
        super().__init__(runs)
        self.sync = sync
        self.shown_sets = [run.gate_sets[0] if run.gate_sets else "" for run in runs]

    def compose(self) -> ComposeResult:
        yield Pane(
            "gate / prompt gradient ratio, every run (log)",
            TimePlot(self._overlay, log=True, id="overlay"),
            id="overlay-pane",
        )
        with Horizontal(id="compare-runs"):
            for i, run in enumerate(self.runs):
                with Vertical(classes="run-column", id=f"run-{i}"):
                    yield Pane(
                        run.title, TimePlot(partial(self._grads, run), log=True, classes=f"run-{i}"), id=f"grads-{i}"
                    )
                    yield Pane(
                        self._heatmap_title(i),
                        Heatmap(partial(self._heatmap, i), classes=f"run-{i}"),
                        id=f"heatmap-{i}",
                    )
                    yield Pane("gates at cursor", GateBars(id=f"gates-{i}"), focusable=False)
        yield Timeline(id="timeline")
        yield Footer()

    @staticmethod
    def _grads(run: RunData, width: int, height: int) -> tuple[int, list[Series]]:
        return curves(run, run.grad_paths, width)

    def _heatmap_title(self, i: int) -> str:
        return f"{self.shown_sets[i] or 'no gates'} × step"

    def _heatmap(self, i: int, width: int, height: int) -> tuple[int, np.ndarray | None]:
        run, gate_set = self.runs[i], self.shown_sets[i]
        if not gate_set:
            return run.n_rows, None
        return run.n_rows, heatmap(run.rec, gate_set, width, 2 * height, n_rows=run.n_rows)

    def on_mount(self) -> None:  # StepScreen.on_mount runs too
        for i, run in enumerate(self.runs):
            self.query_one(f"#grads-{i}", Pane).border_title = f"[{PALETTE[i]}]■ #{i + 1}[/] {run.title}"

    # ------------------------------------------------------------ syncing
    def rows(self, row: int | None = None) -> list[int]:
        """Each run's row for reference row ``row`` (default: the cursor)."""
        row = self.row if row is None else row
        ref = self.runs[0]
        out = [row]
        for run in self.runs[1:]:
            if self.sync == "step":
                out.append(run.row_of_step(ref.step_at(row)))
            else:
                out.append(round(row / max(ref.n_rows - 1, 1) * max(run.n_rows - 1, 0)))
        return out

    def _x(self, run: RunData, rows: np.ndarray) -> np.ndarray:
        """Overlay x of a run's rows: its steps (sync by step) or its fraction of training × OVERLAY_ROWS."""
        if self.sync == "step":
            return run.rec.steps(0, run.n_rows)[rows]
        return rows * OVERLAY_ROWS // max(run.n_rows, 1)

    def _overlay_rows(self) -> int:
        if self.sync == "step":
            return max(run.step_at(run.n_rows - 1) + 1 for run in self.runs)
        return OVERLAY_ROWS

    def _overlay(self, width: int, height: int) -> tuple[int, list[Series]]:
        n_x = self._overlay_rows()
        series = []
        for i, (run, diagnostics) in enumerate(zip(self.runs, self.diagnostics, strict=True)):
            if diagnostics is None or self.shown_sets[i] not in diagnostics.gate_sets:
                continue
            gs = diagnostics.gate_sets[self.shown_sets[i]]
            x = self._x(run, run.rows_of_steps(gs.steps))
            series.append(Series(f"#{i + 1}", downsample(gs.ratio, x, n_x, width), PALETTE[i]))
        if not series:
            raise Pending("computing collapse diagnostics…")
        return n_x, series

    def figure_gate_set(self) -> str | None:
        """The set every run with gates shows, when they agree (otherwise each recording's first)."""
        shown = {name for name in self.shown_sets if name}
        return shown.pop() if len(shown) == 1 else None

    def figure_grouping(self) -> str:
        return distinguishing_key(self.runs)

    def on_diagnosed(self, index: int) -> None:
        self.query_one("#overlay", TimePlot).reload()

    def action_toggle_sync(self) -> None:
        self.sync = "fraction" if self.sync == "step" else "step"
        self.notify(f"cursors synced by {self.sync}", timeout=2)
        self.query_one("#overlay", TimePlot).reload()
        self.show_row(self.row)

    def action_next_gate_set(self) -> None:
        """Move each run with several gate sets to its next one (cycling): heatmap, gate bars and overlay curve."""
        changed = False
        for i, run in enumerate(self.runs):
            sets = run.gate_sets
            if len(sets) > 1:
                self.shown_sets[i] = sets[(sets.index(self.shown_sets[i]) + 1) % len(sets)]
                self.query_one(f"#heatmap-{i}", Pane).border_title = self._heatmap_title(i)
                self.query_one(f"#heatmap-{i} Heatmap", Heatmap).reload()
                changed = True
        if changed:
            self.query_one("#overlay", TimePlot).reload()
            self.show_row(self.row)

    # ------------------------------------------------------------ drawing
    def status(self) -> str:
        return f"{super().status()} · sync by {self.sync}"

    def show_row(self, row: int) -> None:
        if not self.is_mounted:
            return
        rows = self.rows(row)
        for i, (run, run_row) in enumerate(zip(self.runs, rows, strict=True)):
            for plot in self.query(f".run-{i}").results(StepPlot):
                plot.cursor = run_row
            gate_set = self.shown_sets[i]
            if gate_set and run.n_rows:
                try:
                    values = run.gate_row(gate_set, run_row)
                except RecordingError:  # a damaged gate series: the status line names it
                    continue
                self.query_one(f"#gates-{i}", GateBars).show(values, run.gate_labels(gate_set))
        overlay = self.query_one("#overlay", TimePlot)
        overlay.cursor = int(self._x(self.runs[0], np.array([row]))[0]) if self.n_rows else 0
        timeline = self.query_one(Timeline)
        timeline.set_run(self.n_rows, self.markers)
        timeline.cursor = row
        timeline.status = self.status()

    def reload(self) -> None:
        for plot in self.query(StepPlot):
            plot.reload()
