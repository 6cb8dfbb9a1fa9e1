"""F1 / ?: the keys of the viewer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

KEYS = """\
# ws view — keys

| key | does |
|---|---|
| ← → or h l | one step back / forward |
| shift+← shift+→ or H L | 100 steps |
| home / end | first / last step |
| space | play / pause; + and − change the speed |
| [ ] | previous / next event (collapse onset, non-finite values, epoch ends) |
| p | pin the cursor to the newest step of a running recording |
| tab / shift+tab | move between panes; z or F10 full-screens the pane |
| g | next gate set (run view; compare: every run moves to its next) |
| f | sync compare cursors by step or by fraction of training |
| m, c, s, r | recordings: mark for compare, compare marked, stats, rescan (also every 5 s) |
| ctrl+p | command palette: open, compare, stats, export SVG / PNG, theme |
| ctrl+s | save the screen as SVG |
| ctrl+e | save the focused pane's plot as PNG (ratio, heatmap → gate values, losses → accuracy) |
| escape | back |
| q | quit |

Mouse: click a plot or the timeline to move the cursor; scroll the gate list.
"""


class HelpScreen(ModalScreen[None]):
    """The key reference; any of escape, q, F1 or ? closes it."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(KEYS)
