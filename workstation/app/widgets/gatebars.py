"""The current step's gates, one line each: σ(g) and σ'(g) as bars, with the logit and ∂L/∂g when there is room.

A line-API scroll view: only the visible lines are rendered, so a 1,024-gate set costs the same as a small one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from workstation.app.widgets.plot import PALETTE

EIGHTHS = " ▏▎▍▌▋▊▉"
DSIGMOID_MAX = 0.25  # σ'(g) ≤ 1/4, reached at g = 0
LABEL, VALUE, DSIGMOID = Style(dim=True), Style(color=PALETTE[0]), Style(color=PALETTE[1])


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` in [0, 1], in eighths of a cell."""
    if not math.isfinite(fraction):
        return "?".ljust(width)
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


class GateBars(ScrollView, can_focus=True):
    """Gate values at the cursor. :meth:`show` takes ``{"value", "dsigmoid", "logit", "grad"}``, each ``(n,)``, and
    optionally ``"decay"`` and ``"rest"``: the cumulative movement weight decay alone would have made and the rest
    (:mod:`analyses.mechanism`), shown as ``Δ grad … decay …`` when there is room."""

    ALLOW_MAXIMIZE = True

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.gates: dict[str, np.ndarray] = {}
        self.labels: list[str] = []

    def show(self, gates: dict[str, np.ndarray], labels: Sequence[str] | None = None) -> None:
        """Display one step's gates (arrays of equal length ``n``); ``labels`` default to ``g0..g{n-1}``."""
        n = len(gates["value"])
        self.gates = gates
        self.labels = list(labels) if labels and len(labels) == n else [f"g{i}" for i in range(n)]
        if self.virtual_size.height != n:
            self.virtual_size = Size(self.size.width, n)
        self.refresh()

    def line_text(self, i: int, width: int) -> list[Segment]:
        """Segments of gate ``i``'s line in ``width`` cells."""
        value, dsig = float(self.gates["value"][i]), float(self.gates["dsigmoid"][i])
        label = f"{self.labels[i][:6]:>6} "
        extra = f"  g {float(self.gates['logit'][i]):+.2f}  ∂L/∂g {float(self.gates['grad'][i]):+.1e}"
        move = ""
        if "decay" in self.gates:
            move = f"  Δ grad {float(self.gates['rest'][i]):+.1e} decay {float(self.gates['decay'][i]):+.1e}"
        fixed = len(label) + len(" 0.000 σ' ") + len(" 0.00e+00")
        extra = next((e for e in (extra + move, move, extra) if width - fixed - len(e) >= 24), "")
        room = max(6, width - fixed - len(extra))
        value_width = room * 2 // 3
        return [
            Segment(label, LABEL),
            Segment(bar(value, value_width), VALUE),
            Segment(f" {value:.3f} σ' "),
            Segment(bar(dsig / DSIGMOID_MAX, room - value_width), DSIGMOID),
            Segment(f" {dsig:.2e}{extra}"),
        ]

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width  # without the scrollbar
        i = y + int(self.scroll_offset.y)
        if not self.gates or i >= len(self.labels):
            return Strip.blank(width)
        return Strip(self.line_text(i, width)).adjust_cell_length(width)
