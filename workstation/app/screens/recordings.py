"""The recordings pane: runs grouped by method / variant / seed, with status and final HM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Tree

from recorders.errors import WsError
from workstation.app.data import RunData


@dataclass(frozen=True)
class Entry:
    """What the pane shows of one recording; ``error`` is set when it could not be read."""

    path: Path
    method: str = ""
    variant: str = ""
    seed: int = 0
    status: str = ""
    hm: float | None = None
    error: str = ""

    @classmethod
    def read(cls, path: Path) -> Entry:
        try:
            rec = RunData.open(path).rec
        except WsError as exc:
            return cls(path, error=str(exc))
        with rec:
            hm = rec.eval_table()["hm"]
            return cls(path, rec.method, str(rec.config.get("variant") or "default"), rec.seed, rec.status,
                       float(hm[-1]) if len(hm) else None)

    @property
    def label(self) -> str:
        hm = "–" if self.hm is None else f"{100 * self.hm:.2f}"
        return f"seed {self.seed} · {self.status} · HM {hm} · {self.path.name}"


class RecordingsScreen(Screen[None]):
    """A tree of recordings; enter opens one, m marks up to four for compare, c compares, s opens stats."""

    BINDINGS = [
        Binding("m", "mark", "mark"),
        Binding("c", "compare", "compare marked"),
        Binding("s", "stats", "stats"),
    ]

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self.paths = paths
        self.entries: dict[Path, Entry] = {}
        self.marked: list[Path] = []

    def compose(self) -> ComposeResult:
        tree: Tree[Path] = Tree("recordings", id="recordings")
        tree.show_root = False
        yield tree
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Tree).loading = True
        self._scan()

    @work(thread=True, exclusive=True)
    def _scan(self) -> None:
        entries = [Entry.read(p) for p in self.paths]
        self.app.call_from_thread(self._show, entries)

    def _show(self, entries: list[Entry]) -> None:
        self.entries = {e.path: e for e in entries}
        tree: Tree[Path] = self.query_one(Tree)
        tree.loading = False
        tree.clear()
        groups: dict[tuple[str, str], list[Entry]] = {}
        for e in entries:
            if e.error:
                tree.root.add_leaf(f"✗ {e.path.name}: unreadable", data=e.path)
            else:
                groups.setdefault((e.method, e.variant), []).append(e)
        methods: dict[str, object] = {}
        for (method, variant), group in sorted(groups.items()):
            if method not in methods:
                methods[method] = tree.root.add(method, expand=True)
            node = methods[method].add(variant, expand=True)  # type: ignore[attr-defined]
            for e in sorted(group, key=lambda e: e.seed):
                node.add_leaf(e.label, data=e.path)
        tree.root.expand()

    def on_tree_node_selected(self, message: Tree.NodeSelected[Path]) -> None:
        if message.node.data is not None:
            self.app.open_run(message.node.data)  # type: ignore[attr-defined]

    def action_mark(self) -> None:
        node = self.query_one(Tree).cursor_node
        if node is None or node.data is None or self.entries.get(node.data, Entry(node.data, error="?")).error:
            return
        path = node.data
        if path in self.marked:
            self.marked.remove(path)
        elif len(self.marked) < 4:
            self.marked.append(path)
        else:
            self.notify("compare takes at most four recordings", severity="warning")
            return
        node.set_label(("✓ " if path in self.marked else "") + self.entries[path].label)

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two to four recordings with m first", severity="warning")
            return
        self.app.open_compare(self.marked)  # type: ignore[attr-defined]

    def action_stats(self) -> None:
        self.app.open_stats([e.path for e in self.entries.values() if not e.error])  # type: ignore[attr-defined]
