"""The shared timeline: a status line (step, epoch, playback, live state) over a bar of the whole run with the
cursor and the event markers; clicking the bar moves the cursor."""

from __future__ import annotations

from collections.abc import Sequence

from rich.style import Style
from rich.text import Text
from textual import events
from textual.reactive import reactive
from textual.widget import Widget

from workstation.app.data import Marker, column_of, row_of_column
from workstation.app.widgets.plot import StepPlot

GLYPHS = {"epoch_end": ("╵", Style(dim=True)), "nonfinite": ("✗", Style(color="#d62728", bold=True)),
          "collapse_onset": ("◆", Style(color="#ff7f0e", bold=True))}
OTHER = ("•", Style(color="#1f77b4"))


class Timeline(Widget):
    """Two rows: ``status`` (set by the screen) and the run bar over ``n_rows`` rows with ``markers``."""

    cursor: reactive[int] = reactive(0)
    status: reactive[str] = reactive("")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.n_rows = 0
        self.markers: Sequence[Marker] = ()

    def set_run(self, n_rows: int, markers: Sequence[Marker]) -> None:
        self.n_rows, self.markers = n_rows, markers
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width)
        cells: list[tuple[str, Style | None]] = [("─", Style(dim=True))] * width
        for m in self.markers:
            cells[int(column_of(m.row, self.n_rows, width))] = GLYPHS.get(m.kind, OTHER)
        cells[int(column_of(self.cursor, self.n_rows, width))] = ("█", Style(bold=True))
        status = self.status if len(self.status) <= width else self.status[: width - 1] + "…"
        text = Text(f"{status}\n", no_wrap=True, overflow="crop")  # never wraps: the bar stays on row 2
        for char, style in cells:
            text.append(char, style)
        return text

    def on_click(self, event: events.Click) -> None:
        if self.n_rows:
            self.post_message(StepPlot.Clicked(row_of_column(event.x, self.n_rows, max(1, self.size.width))))
