"""Plots whose x axis is a recording's row index: curves (:class:`TimePlot`) and a gate × step heatmap.

Each plot is given a *loader* ``(width, height) -> (n_rows, payload)`` that reads what ``width`` screen columns
need (see :mod:`workstation.app.data`); it runs in a background thread on mount, on resize and on
:meth:`StepPlot.reload`. The plot area is drawn once per payload into cached strips (Textual's line API); moving
the cursor only re-renders the legend, the axis and the highlighted cursor column, and never reads the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual import events, work
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget
from textual.worker import get_current_worker

from recorders.format.errors import WsError
from workstation.app.data import Columns, column_of, row_of_column

GUTTER = 9
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# viridis at 9 stops: readable on dark and light themes
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
COLOR_LEVELS = 32
CURSOR = Style(reverse=True)
AXIS = Style(bold=True)
DIM = Style(dim=True)
Loader = Callable[[int, int], tuple[int, Any]]
Cell = tuple[str, Style | None]


class Pending(Exception):
    """Raised by a loader whose data is not ready yet (e.g. diagnostics still running); the plot shows the message
    until :meth:`StepPlot.reload` is called again."""


@dataclass(frozen=True)
class Series:
    """One curve: ``columns`` summarised for the plot's width, drawn in ``color``."""

    name: str
    columns: Columns
    color: str


def fmt(value: float) -> str:
    """A number in at most 8 characters; NaN shows as –."""
    if not math.isfinite(value):
        return "–" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"


def strip(cells: Sequence[Cell]) -> Strip:
    """One strip from per-cell (character, style), runs of equal style merged into one segment."""
    return Strip([Segment("".join(c for c, _ in run), style) for style, run in groupby(cells, key=lambda c: c[1])])


class StepPlot(Widget):
    """Base of the step-indexed plots: background loading, cached image rows, the cursor column, clicks.

    Subclasses implement :meth:`image` (the plot rows, without the cursor) and :meth:`legend`.
    """

    ALLOW_MAXIMIZE = True
    cursor: reactive[int] = reactive(0, repaint=False)

    class Clicked(Message):
        """The user clicked inside the plot at recording row ``row``."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    class Loaded(Message):
        """A load finished (with data, a note, or an error note): the plot's first frame can be painted."""

    def __init__(self, loader: Loader, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._loader = loader
        self.n_rows = 0
        self.payload: Any = None
        self.note = "loading…"
        self.loaded = False  # a load has finished (or there is no room to plot), so the plot has been drawn
        self._image: tuple[Size, list[Strip]] | None = None  # the drawn rows and the size they fit

    @property
    def plot_width(self) -> int:
        return max(1, self.size.width - GUTTER)

    @property
    def plot_height(self) -> int:
        return max(1, self.size.height - 2)  # a legend row on top, an axis row at the bottom

    def on_resize(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Read again (after a resize, or when a live file grew)."""
        if self.size.width > GUTTER:
            self._load(self.plot_width, self.plot_height)
        elif not self.loaded:  # too narrow to plot: nothing to wait for
            self.loaded = True
            self.post_message(self.Loaded())

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _load(self, width: int, height: int) -> None:
        try:
            result: tuple[int, Any] | str = self._loader(width, height)
        except Pending as exc:
            result = str(exc)
        except (WsError, OSError, KeyError, ValueError) as exc:
            result = f"cannot read: {exc}"
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._loaded, result)

    def _loaded(self, result: tuple[int, Any] | str) -> None:
        if isinstance(result, str):
            self.note, self.payload = result, None
        else:
            (self.n_rows, self.payload), self.note = result, ""
        self._image = None
        self.refresh()
        self.loaded = True
        self.post_message(self.Loaded())

    def cursor_column(self, row: int | None = None) -> int:
        """Plot column (from 0, gutter excluded) of ``row`` (default: the cursor)."""
        return int(column_of(self.cursor if row is None else row, self.n_rows, self.plot_width))

    def watch_cursor(self, old: int, new: int) -> None:
        """Repaint only what the cursor touches: the legend, the axis and the old and new cursor columns.

        Nothing at all while the cursor stays in its column (hundreds of steps a column on a long run): the
        legend shows the column's values, so it has not changed either.
        """
        before, after = self.cursor_column(old), self.cursor_column(new)
        if before == after:
            return
        width, height = self.size
        self.refresh(
            Region(0, 0, width, 1),
            Region(0, height - 1, width, 1),
            *(Region(GUTTER + x, 0, 1, height) for x in (before, after)),
        )

    # ------------------------------------------------------------ drawing
    def image(self) -> list[Strip]:
        """The plot rows (gutter included), ``plot_height`` strips; drawn once per payload and size."""
        raise NotImplementedError

    def legend(self, column: int) -> Strip:
        """The top row, for the cursor in ``column``."""
        raise NotImplementedError

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self.payload is None:
            return strip([(self.note if y == 0 else "", DIM)]).adjust_cell_length(width)
        column = min(self.cursor_column(), self.plot_width - 1)
        if y == 0:
            return self.legend(column).adjust_cell_length(width)
        if y == height - 1:
            return strip([(" " * (GUTTER + column), None), ("▲", AXIS)]).adjust_cell_length(width)
        if self._image is None or self._image[0] != self.size:
            self._image = self.size, [line.adjust_cell_length(width) for line in self.image()]
        image = self._image[1]
        if y - 1 >= len(image):
            return Strip.blank(width)
        x = GUTTER + column
        left, middle, right = image[y - 1].divide([x, x + 1, width])
        return Strip.join([left, middle.apply_style(CURSOR), right])

    def on_click(self, event: events.Click) -> None:
        column = event.x - GUTTER
        if column >= 0 and self.n_rows:
            self.post_message(self.Clicked(row_of_column(column, self.n_rows, self.plot_width)))


class TimePlot(StepPlot):
    """Curves of per-step series: each column draws its min–max range (│) and its last value (•).

    Payload: a list of :class:`Series`. With ``log`` the y axis is log10 (non-positive values are not drawn).
    The legend shows each series' value in the cursor's column.
    """

    def __init__(self, loader: Loader, *, log: bool = False, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(loader, id=id, classes=classes)
        self.log_scale = log

    def _y(self, values: np.ndarray) -> np.ndarray:
        if not self.log_scale:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)

    def render_line(self, y: int) -> Strip:
        if self.payload == []:
            return strip([("nothing recorded" if y == 0 else "", DIM)]).adjust_cell_length(self.size.width)
        return super().render_line(y)

    def legend(self, column: int) -> Strip:
        cells: list[Cell] = []
        for s in self.payload:
            value = float(s.columns.last[min(column, s.columns.width - 1)])
            cells += [("■ ", Style(color=s.color)), (f"{s.name} {fmt(value)}  ", None)]
        return strip(cells)

    def image(self) -> list[Strip]:
        series: list[Series] = self.payload
        width, height = self.plot_width, self.plot_height
        ys = [(self._y(s.columns.lo), self._y(s.columns.hi), self._y(s.columns.last)) for s in series]
        every = np.concatenate([np.concatenate(y) for y in ys])
        finite = every[np.isfinite(every)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        min_span = 1.0 if self.log_scale else 1e-12  # at least a decade on a log axis: no magnified noise
        if hi - lo < min_span:
            mid = (hi + lo) / 2
            lo, hi = mid - max(min_span, 1.0) / 2, mid + max(min_span, 1.0) / 2
        grid: list[list[Cell]] = [[(" ", None)] * width for _ in range(height)]

        def row(v: np.ndarray) -> np.ndarray:
            return np.clip(np.round((hi - v) / (hi - lo) * (height - 1)), 0, height - 1).astype(int)

        for s, (ylo, yhi, ylast) in zip(series, ys, strict=True):
            style = Style(color=s.color)
            ok = np.isfinite(ylo) & np.isfinite(yhi) & np.isfinite(ylast)
            top, bottom, last = (row(np.where(ok, v, hi)) for v in (yhi, ylo, ylast))
            for c in np.flatnonzero(ok[:width]):
                for r in range(top[c], bottom[c] + 1):
                    grid[r][c] = ("│", style)
                grid[last[c]][c] = ("•", style)
        label = (lambda v: fmt(10**v)) if self.log_scale else fmt
        gutters = [label(hi) if r == 0 else label(lo) if r == height - 1 else "" for r in range(height)]
        return [strip([(f"{g:>{GUTTER - 1}} ", DIM), *cells]) for g, cells in zip(gutters, grid, strict=True)]


def colormap_styles() -> list[str]:
    """``COLOR_LEVELS`` hex colours interpolated along :data:`VIRIDIS` (index 0 ↔ 0, last ↔ 1)."""
    stops = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in VIRIDIS], dtype=np.float64)
    x = np.linspace(0, len(VIRIDIS) - 1, COLOR_LEVELS)
    rgb = np.stack([np.interp(x, np.arange(len(VIRIDIS)), stops[:, k]) for k in range(3)], axis=1)
    return ["#{:02x}{:02x}{:02x}".format(*np.round(c).astype(int)) for c in rgb]


COLORS = colormap_styles()


class Heatmap(StepPlot):
    """Gate × step heatmap of values in [0, 1] (viridis), two gate bins per terminal row (▀ half blocks).

    Payload: ``(bins, plot_width)`` array from :func:`workstation.app.data.heatmap`, loaded with
    ``gate_bins = 2 × plot_height``; fewer gates than that are repeated to fill the height. The legend gives the
    scale and the value range in the cursor's column.
    """

    def legend(self, column: int) -> Strip:
        at = self.payload[:, min(column, self.payload.shape[1] - 1)]
        span = f"{fmt(float(np.nanmin(at)))}…{fmt(float(np.nanmax(at)))}" if np.isfinite(at).any() else "–"
        return strip([("0 ", None), *((("█", Style(color=c))) for c in VIRIDIS), (f" 1   at cursor: {span}", None)])

    def image(self) -> list[Strip]:
        matrix: np.ndarray = self.payload
        matrix = np.repeat(matrix, max(1, 2 * self.plot_height // matrix.shape[0]), axis=0)
        if matrix.shape[0] % 2:
            matrix = np.vstack([matrix, np.full((1, matrix.shape[1]), np.nan)])
        level = np.where(np.isfinite(matrix), np.clip(np.nan_to_num(matrix), 0, 1) * (COLOR_LEVELS - 1), -1)
        level = np.round(level).astype(int)
        styles: dict[tuple[int, int], Style] = {}

        def style(top: int, bottom: int) -> Style:
            if (top, bottom) not in styles:
                styles[top, bottom] = Style(
                    color=COLORS[top] if top >= 0 else None, bgcolor=COLORS[bottom] if bottom >= 0 else None
                )
            return styles[top, bottom]

        n_lines = matrix.shape[0] // 2
        out = []
        for r in range(n_lines):
            gutter = "gate 0" if r == 0 else "last" if r == n_lines - 1 else ""
            cells = [("▀", style(t, b)) for t, b in zip(level[2 * r], level[2 * r + 1], strict=True)]
            out.append(strip([(f"{gutter:>{GUTTER - 1}} ", DIM), *cells]))
        return out
