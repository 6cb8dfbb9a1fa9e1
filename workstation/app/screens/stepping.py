"""The step cursor shared by the run and compare screens: keys, playback, events, clicks and live following."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textual import work
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import var
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.worker import get_current_worker

from recorders.format.errors import WsError
from workstation.app.data import Marker, RunData
from workstation.app.widgets.plot import StepPlot
from workstation.safe_text import clean

SPEEDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # rows per playback tick
TICK_SECONDS = 0.1
# The analyses figure (``analyses.figures`` kind) of each pane, by the first word of the pane's id.
FIGURE_OF_PANE = {"ratio": "ratio", "overlay": "ratio", "heatmap": "gates", "losses": "accuracy"}
DEFAULT_FIGURE = "ratio"


class Pane(Vertical):
    """A titled, focusable (tab) and maximisable (z, F10) box around one view of the run."""

    ALLOW_MAXIMIZE = True

    def __init__(self, title: str, *children: object, focusable: bool = True, id: str | None = None) -> None:
        super().__init__(*children, id=id)  # type: ignore[arg-type]
        self.border_title = title
        self.can_focus = focusable


class StepScreen(Screen[None]):
    """A screen with a step cursor over the rows of a reference run (``runs[0]``).

    Subclasses compose the widgets, and implement :meth:`show_row` (repaint for the cursor) and
    :meth:`reload` (read again after the file grew).
    """

    BINDINGS = [
        Binding("left,h", "step(-1)", "−1 step", priority=True),
        Binding("right,l", "step(1)", "+1 step", priority=True),
        Binding("H,shift+left", "step(-100)", "−100", priority=True),
        Binding("L,shift+right", "step(100)", "+100", priority=True),
        Binding("home", "jump(0)", "first", show=False, priority=True),
        Binding("end", "jump(-1)", "last", show=False, priority=True),
        Binding("space", "play", "play/pause", priority=True),
        Binding("plus,equals_sign", "speed(1)", "faster", show=False),
        Binding("minus", "speed(-1)", "slower", show=False),
        Binding("left_square_bracket", "event(-1)", "◀ event", show=False),
        Binding("right_square_bracket", "event(1)", "event ▶", show=False),
        Binding("z,f10", "zoom", "full-screen"),
        Binding("p", "pin", "pin newest", show=False),
        Binding("ctrl+e", "export_png", "PNG", show=False),
    ]

    # vars, not reactives: a reactive on a screen repaints the whole screen on every change; show_row repaints
    # only what the cursor touches.
    ALLOW_IN_MAXIMIZED_VIEW = "Footer, Timeline"  # a full-screen pane keeps the step, epoch and run bar in view
    row: var[int] = var(0, init=False)
    playing: var[bool] = var(False, init=False)
    pinned: var[bool] = var(False, init=False)

    def __init__(self, runs: Sequence[RunData]) -> None:
        super().__init__()
        self.runs = list(runs)
        self.speed_index = 0
        self._markers: list[Marker] = self.runs[0].markers()
        self._player: Timer | None = None
        self._live: Timer | None = None
        self.diagnostics: list[Any] = [None] * len(self.runs)  # analyses.diagnostics.RecordingDiagnostics
        self._diagnosis_started = False

    @property
    def n_rows(self) -> int:
        return self.runs[0].n_rows

    @property
    def markers(self) -> list[Marker]:
        return self._markers

    # ------------------------------------------------------------ hooks
    def show_row(self, row: int) -> None:
        """Repaint everything that depends on the cursor."""

    def reload(self) -> None:
        """Re-read what depends on the number of rows (a live file grew)."""

    def on_diagnosed(self, index: int) -> None:
        """``self.diagnostics[index]`` has arrived."""

    def status(self) -> str:
        """The timeline's status line."""
        run, row = self.runs[0], self.row
        play = f"▶ {SPEEDS[self.speed_index] / TICK_SECONDS:g} steps/s" if self.playing else "⏸"
        live = " · pinned" if self.pinned else ""
        position = f"step {run.step_at(row):,} · row {row + 1:,}/{self.n_rows:,}" if self.n_rows else "no rows yet"
        unreadable = "".join(f" · {r.unreadable}" for r in self.runs if r.unreadable)
        return f"{position} · epoch {run.epoch_at(row)} · {play} · {run.rec.status}{live} · {run.title}{unreadable}"

    # ------------------------------------------------------------ cursor
    def on_mount(self) -> None:
        self._player = self.set_interval(TICK_SECONDS, self._tick, pause=True)
        if any(r.rec.status == "running" for r in self.runs):
            self._live = self.set_interval(getattr(self.app, "live_interval", 1.0), self._poll)
        self.show_row(self.row)

    def on_step_plot_loaded(self) -> None:
        """Once every plot has its first data, start the diagnostics after that frame is painted: on two cores
        they would otherwise slow the first paint by seconds on a large recording."""
        if not self._diagnosis_started and all(plot.loaded for plot in self.query(StepPlot)):
            self._diagnosis_started = True
            self.call_after_refresh(self._painted)

    def _painted(self) -> None:
        # What exists now (modules, styles, widgets, cached plot lines) lives as long as the screen: freezing it
        # keeps Python's full collections from scanning it, which paused a cursor step for 230 ms on 100k × 1,024.
        gc.freeze()
        self.diagnose()

    @work(thread=True, exclusive=True, exit_on_error=False, group="diagnose")
    def diagnose(self) -> None:
        """Run the analyses' collapse diagnostics of every run with gates, in a background thread."""
        for i, run in enumerate(self.runs):
            if not run.gate_sets:
                continue
            try:
                result = run.diagnose()
            except (WsError, OSError, KeyError, ValueError) as exc:
                message = clean(f"diagnostics of {run.title}: {exc}")
                self.app.call_from_thread(self.notify, message, severity="warning")
                continue
            if get_current_worker().is_cancelled:
                return
            self.app.call_from_thread(self._diagnosed, i, result)

    def _diagnosed(self, index: int, result: Any) -> None:
        self.diagnostics[index] = result
        run = self.runs[index]
        run.extra_markers = [
            Marker(
                run.row_of_step(int(gs.onset_step)),
                int(gs.onset_step),
                "collapse_onset",
                f"{name}: {gs.verdict} from step {gs.onset_step} (diagnosed: does not matter, not moved by gradient)",
            )
            for name, gs in result.gate_sets.items()
            if gs.onset_step is not None
        ]
        if index == 0:
            self._markers = run.markers()
        self.on_diagnosed(index)
        self.show_row(self.row)

    def validate_row(self, row: int) -> int:
        return min(max(row, 0), max(self.n_rows - 1, 0))

    def watch_row(self) -> None:
        self.show_row(self.row)

    def watch_playing(self, playing: bool) -> None:
        if self._player is not None:
            (self._player.resume if playing else self._player.pause)()
        self.show_row(self.row)

    def action_step(self, delta: int) -> None:
        self.pinned = False
        self.row += delta

    def action_jump(self, row: int) -> None:
        self.pinned = False
        self.row = row if row >= 0 else self.n_rows + row

    def action_play(self) -> None:
        if not self.playing and self.row >= self.n_rows - 1:
            self.row = 0
        self.playing = not self.playing

    def action_speed(self, delta: int) -> None:
        self.speed_index = min(max(self.speed_index + delta, 0), len(SPEEDS) - 1)
        self.show_row(self.row)

    def action_event(self, direction: int) -> None:
        """Jump to the previous (−1) or next (+1) event marker of the reference run."""
        rows = [m.row for m in self.markers]
        targets = [r for r in rows if r > self.row] if direction > 0 else [r for r in rows if r < self.row]
        if not targets:
            self.notify("no further events" if direction > 0 else "no earlier events", timeout=2)
            return
        self.action_jump(min(targets) if direction > 0 else max(targets))

    def action_pin(self) -> None:
        self.pinned = not self.pinned
        if self.pinned:
            self.row = self.n_rows - 1
        self.show_row(self.row)

    def action_zoom(self) -> None:
        if self.maximized is not None:
            self.minimize()
        elif self.focused is not None:
            self.maximize(self.focused)
        else:
            self.focus_next()
            if self.focused is not None:
                self.maximize(self.focused)

    def on_step_plot_clicked(self, message: StepPlot.Clicked) -> None:
        self.pinned = False
        self.row = message.row

    # ------------------------------------------------------------ export
    def figure_kind(self) -> str | None:
        """The ``analyses.figures`` kind for the focused pane (the ratio when no pane has focus); None when that
        pane has no figure."""
        node = self.focused
        while node is not None and not isinstance(node, Pane):
            node = node.parent if isinstance(node.parent, Widget) else None
        if node is None:
            return DEFAULT_FIGURE
        return FIGURE_OF_PANE.get((node.id or "").split("-")[0])

    def figure_grouping(self) -> str:
        """The ``by`` key of the exported figure: ``method`` here; the compare view groups by what tells its
        runs apart."""
        return "method"

    def figure_gate_set(self) -> str | None:
        """The gate set the exported figure draws: None (each recording's first) unless a screen shows one."""
        return None

    def action_export_png(self) -> None:
        """Save the focused pane's plot as ``<export_dir>/<recording or "compare">-<kind>.png`` through
        :func:`analyses.figures.plot_runs`, in a background thread; a notification names the file."""
        kind = self.figure_kind()
        if kind is None:
            self.notify(
                "this pane has no figure; focus the ratio, heatmap or losses pane (tab) and export again",
                title="export PNG",
                severity="warning",
            )
            return
        paths = [run.rec.path for run in self.runs]
        stem = paths[0].stem if len(paths) == 1 else "compare"
        out = Path(getattr(self.app, "export_dir", Path.cwd())) / f"{stem}-{kind}.png"
        self.notify(f"drawing {kind} to {out.name}…", title="export PNG", timeout=3)
        self._export(paths, kind, self.figure_grouping(), self.figure_gate_set(), out)

    @work(thread=True, exit_on_error=False, group="export")
    def _export(self, paths: list[Path], kind: str, by: str, gate_set: str | None, out: Path) -> None:
        from analyses.figures import plot_runs  # matplotlib: imported when first asked

        try:
            saved = plot_runs(paths, kind, out, by=by, gate_set=gate_set)
        except (WsError, OSError, ValueError) as exc:
            self.app.call_from_thread(self.notify, clean(exc), title="export PNG failed", severity="error")
        else:
            self.app.call_from_thread(self.notify, f"saved {saved}", title="export PNG")

    def _tick(self) -> None:
        if self.row >= self.n_rows - 1:
            self.playing = False
        else:
            self.row += SPEEDS[self.speed_index]

    def _poll(self) -> None:
        """Follow running recordings: re-read their lengths, reload when they grew, stop once all ended."""
        try:
            grew = [run.refresh() for run in self.runs]
        except WsError as exc:  # the file went bad while followed: say so and stop following
            self.notify(str(exc), title="cannot follow recording", severity="error", timeout=10)
            if self._live is not None:
                self._live.stop()
            return
        statuses = [_status(run) for run in self.runs]
        before, self._statuses = getattr(self, "_statuses", None), statuses
        if any(grew):
            self._markers = self.runs[0].markers()
            self.reload()
            self.diagnose()
            if self.pinned:
                self.row = self.n_rows - 1
            self.show_row(self.row)
        elif statuses != before:  # the writer finished without new rows: the status line must still follow it
            self._markers = self.runs[0].markers()
            self.reload()
            self.show_row(self.row)
        if self._live is not None and all(s != "running" for s in statuses):
            self._live.stop()


def _status(run: RunData) -> str:
    """The recording's status now; ``running`` while the attribute is being rewritten (the next poll rereads)."""
    try:
        return run.rec.status
    except (OSError, RuntimeError, KeyError):
        return "running"
