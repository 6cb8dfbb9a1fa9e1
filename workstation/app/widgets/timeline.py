"""The shared timeline: a status line (step, epoch, playback, live state) over a bar of the whole run with the
cursor and the event markers; clicking the bar moves the cursor.

Line API: the bar (markers included) is built once per run length, markers and width into a cached strip; a
cursor move only swaps the old and new cursor cells, so stepping costs the same for any number of events.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from workstation.app.data import Marker, column_of, row_of_column
from workstation.app.widgets.plot import Cell, StepPlot, strip

GLYPHS: dict[str, Cell] = {
    "epoch_end": ("╵", Style(dim=True)),
    "nonfinite": ("✗", Style(color="#d62728", bold=True)),
    "collapse_onset": ("◆", Style(color="#ff7f0e", bold=True)),
}
OTHER: Cell = ("•", Style(color="#1f77b4"))
RULE: Cell = ("─", Style(dim=True))
CURSOR: Cell = ("█", Style(bold=True))


class Timeline(Widget):
    """Two rows: ``status`` (set by the screen) and the run bar over ``n_rows`` rows with ``markers``."""

    cursor: reactive[int] = reactive(0, repaint=False)
    status: reactive[str] = reactive("", repaint=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.n_rows = 0
        self.markers: Sequence[Marker] = ()
        self._bar: tuple[tuple[int, int, tuple[Marker, ...], Style], Strip] | None = None

    def set_run(self, n_rows: int, markers: Sequence[Marker]) -> None:
        """Show a run of ``n_rows`` rows with ``markers``; repaints the bar only when they changed."""
        if n_rows != self.n_rows or (markers is not self.markers and list(markers) != list(self.markers)):
            self.n_rows, self.markers = n_rows, markers
            self.refresh()

    def watch_status(self) -> None:
        self.refresh(Region(0, 0, self.outer_size.width, 1))

    def watch_cursor(self) -> None:
        self.refresh(Region(0, 1, self.outer_size.width, 1))

    def _bar_strip(self, width: int, base: Style) -> Strip:
        """The bar without the cursor, cached for the current run length, markers, ``width`` and ``base`` style."""
        key = (self.n_rows, width, tuple(self.markers), base)
        if self._bar is None or self._bar[0] != key:
            cells = [RULE] * width
            for m in self.markers:
                cells[int(column_of(m.row, self.n_rows, width))] = GLYPHS.get(m.kind, OTHER)
            self._bar = key, strip(cells).apply_style(base)
        return self._bar[1]

    def render_line(self, y: int) -> Strip:
        width, base = self.size.width, self.rich_style  # base: the widget's colours, under the glyphs' styles
        if y == 0:  # never wraps: the bar stays on row 2
            status = self.status if len(self.status) <= width else self.status[: width - 1] + "…"
            return Strip([Segment(status.ljust(width), base)], width)
        if y != 1 or width <= 0:
            return Strip.blank(width, base)
        x = int(column_of(self.cursor, self.n_rows, width))
        left, _, right = self._bar_strip(width, base).divide([x, x + 1, width])
        return Strip.join([left, strip([CURSOR]).apply_style(base), right])

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if self.n_rows and offset is not None:
            self.post_message(StepPlot.Clicked(row_of_column(offset.x, self.n_rows, max(1, self.size.width))))
