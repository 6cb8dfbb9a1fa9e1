"""Plots whose x axis is a recording's row index: curves (:class:`TimePlot`) and a gate × step heatmap.

Each plot is given a *loader* ``(width, height) -> (n_rows, payload)`` that reads what ``width`` screen columns
need (see :mod:`workstation.app.data`); it runs in a background thread on mount, on resize and on
:meth:`StepPlot.reload`. Moving the cursor only repaints: it never reads the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual import events, work
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.worker import get_current_worker

from recorders.errors import WsError
from workstation.app.data import Columns, column_of, row_of_column

GUTTER = 9
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# viridis at 9 stops: readable on dark and light themes
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
CURSOR = Style(reverse=True)
Loader = Callable[[int, int], tuple[int, Any]]


@dataclass(frozen=True)
class Series:
    """One curve: ``columns`` summarised for the plot's width, drawn in ``color``."""

    name: str
    columns: Columns
    color: str


def fmt(value: float) -> str:
    """A number in at most 8 characters."""
    if not math.isfinite(value):
        return "–" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"


def _line(cells: Sequence[tuple[str, Style | None]]) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    for char, style in cells:
        text.append(char, style)
    return text


class StepPlot(Widget):
    """Base of the step-indexed plots: background loading, the cursor column and clicks that move the cursor."""

    ALLOW_MAXIMIZE = True
    cursor: reactive[int] = reactive(0)

    class Clicked(Message):
        """The user clicked inside the plot at recording row ``row``."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    def __init__(self, loader: Loader, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._loader = loader
        self.n_rows = 0
        self.payload: Any = None
        self.note = "loading…"

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

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _load(self, width: int, height: int) -> None:
        try:
            result: tuple[int, Any] | str = self._loader(width, height)
        except (WsError, OSError, KeyError, ValueError) as exc:
            result = f"cannot read: {exc}"
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._loaded, result)

    def _loaded(self, result: tuple[int, Any] | str) -> None:
        if isinstance(result, str):
            self.note, self.payload = result, None
        else:
            (self.n_rows, self.payload), self.note = result, ""
        self.refresh()

    def cursor_column(self) -> int:
        return int(column_of(self.cursor, self.n_rows, self.plot_width))

    def axis(self) -> Text:
        """The bottom row: a ▲ under the cursor column."""
        col = self.cursor_column()
        return _line([(" ", None)] * (GUTTER + col) + [("▲", Style(bold=True))])

    def on_click(self, event: events.Click) -> None:
        column = event.x - GUTTER
        if column >= 0 and self.n_rows:
            self.post_message(self.Clicked(row_of_column(column, self.n_rows, self.plot_width)))


class TimePlot(StepPlot):
    """Curves of per-step series: each column draws its min–max range (│) and its last value (•).

    Payload: a list of :class:`Series`. With ``log`` the y axis is log10 (non-positive values are not drawn).
    The legend shows each series' value in the cursor's column.
    """

    def __init__(self, loader: Loader, *, log: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(loader, id=id, classes=classes)
        self.log_scale = log

    def _y(self, values: np.ndarray) -> np.ndarray:
        if not self.log_scale:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)

    def render(self) -> Text:
        series: list[Series] = self.payload or []
        width, height = self.plot_width, self.plot_height
        if not series:
            return Text(self.note or "nothing recorded", style="dim")
        col = self.cursor_column()
        legend = Text(no_wrap=True, overflow="ellipsis")
        for s in series:
            legend.append("■ ", Style(color=s.color))
            legend.append(f"{s.name} {fmt(float(s.columns.last[min(col, s.columns.width - 1)]))}  ")
        ys = [(self._y(s.columns.lo), self._y(s.columns.hi), self._y(s.columns.last)) for s in series]
        finite = np.concatenate([np.concatenate(y)[np.isfinite(np.concatenate(y))] for y in ys])
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        min_span = 1.0 if self.log_scale else 1e-12  # at least a decade on a log axis: no magnified noise
        if hi - lo < min_span:
            mid = (hi + lo) / 2
            lo, hi = mid - max(min_span, 1.0) / 2, mid + max(min_span, 1.0) / 2
        grid: list[list[tuple[str, Style | None]]] = [[(" ", None)] * width for _ in range(height)]

        def row(v: np.ndarray) -> np.ndarray:
            return np.clip(np.round((hi - v) / (hi - lo) * (height - 1)), 0, height - 1)

        for s, (ylo, yhi, ylast) in zip(series, ys, strict=True):
            style = Style(color=s.color)
            ok = np.isfinite(ylo) & np.isfinite(yhi) & np.isfinite(ylast)
            top, bottom, last = row(np.where(ok, yhi, hi)), row(np.where(ok, ylo, hi)), row(np.where(ok, ylast, hi))
            for c in np.flatnonzero(ok[:width]):
                for r in range(int(top[c]), int(bottom[c]) + 1):
                    grid[r][c] = ("│", style)
                grid[int(last[c])][c] = ("•", style)
        label = (lambda v: fmt(10**v)) if self.log_scale else fmt
        lines = [legend]
        for r, cells in enumerate(grid):
            gutter = label(hi) if r == 0 else label(lo) if r == height - 1 else ""
            cells[col] = (cells[col][0], (cells[col][1] or Style()) + CURSOR)
            lines.append(_line([(f"{gutter:>{GUTTER - 1}} ", Style(dim=True))] + cells))
        lines.append(self.axis())
        return Text("\n", no_wrap=True).join(lines)


def _colormap(value: float) -> Color | None:
    if not math.isfinite(value):
        return None
    x = min(max(value, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    a, b = Color.parse(VIRIDIS[i]).triplet, Color.parse(VIRIDIS[i + 1]).triplet
    assert a is not None and b is not None
    t = x - i
    return Color.from_rgb(*(round(p + (q - p) * t) for p, q in zip(a, b, strict=True)))


class Heatmap(StepPlot):
    """Gate × step heatmap of values in [0, 1] (viridis), two gate bins per terminal row (▀ half blocks).

    Payload: ``(bins, plot_width)`` array from :func:`workstation.app.data.heatmap`, loaded with
    ``gate_bins = 2 × plot_height``. The gutter names the first and last gate; the legend gives the scale and the
    value range in the cursor column.
    """

    def render(self) -> Text:
        matrix: np.ndarray | None = self.payload
        if matrix is None:
            return Text(self.note or "no gates recorded", style="dim")
        col = min(self.cursor_column(), matrix.shape[1] - 1)
        bins = matrix.shape[0]
        at = matrix[:, col]
        matrix = np.repeat(matrix, max(1, 2 * self.plot_height // bins), axis=0)  # few gates: fill the height
        if matrix.shape[0] % 2:
            matrix = np.vstack([matrix, np.full((1, matrix.shape[1]), np.nan)])
        colors = [[_colormap(v) for v in row] for row in matrix]
        legend = Text(no_wrap=True, overflow="ellipsis")
        legend.append("0 ")
        for c in VIRIDIS:
            legend.append("█", Style(color=c))
        legend.append(" 1   cursor column: ")
        legend.append(f"{fmt(float(np.nanmin(at)))}…{fmt(float(np.nanmax(at)))}" if np.isfinite(at).any() else "–")
        lines = [legend]
        n_lines = matrix.shape[0] // 2
        for r in range(n_lines):
            gutter = f"gate {r * 2}" if r == 0 else "last" if r == n_lines - 1 else ""
            cells = [("▀", Style(color=top, bgcolor=bottom)) for top, bottom in
                     zip(colors[2 * r], colors[2 * r + 1], strict=True)]
            lines.append(_line([(f"{gutter:>{GUTTER - 1}} ", Style(dim=True))] + cells))
        lines.append(self.axis())
        return Text("\n", no_wrap=True).join(lines)
