"""The recordings pane: runs grouped by method / variant / seed, with status and final HM, rescanned as runs
appear."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Tree
from textual.widgets.tree import TreeNode
from textual.worker import Worker, get_current_worker

from recorders.format import iter_recordings
from recorders.format.errors import RecordingError, WsError
from workstation.app.data import RunData
from workstation.safe_text import clean

RESCAN_SECONDS = 5.0


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
            run = RunData.open(path)
        except WsError as exc:
            return cls(path, error=clean(exc))
        with run.rec as rec:
            return cls(
                path,
                clean(rec.method),
                clean(rec.config.get("variant") or "default"),
                rec.seed,
                clean(rec.status),
                run.final_hm(),
            )

    @property
    def label(self) -> str:
        hm = "–" if self.hm is None else f"{100 * self.hm:.2f}"
        return f"seed {self.seed} · {self.status} · HM {hm} · {clean(self.path.name)}"


def expand(sources: Sequence[Path]) -> Iterator[Path]:
    """The recordings under ``sources`` (files, and directories searched recursively for ``*.h5``); a source
    that no longer exists lists nothing."""
    for source in sources:
        with contextlib.suppress(RecordingError):
            yield from iter_recordings([source])


class Catalog:
    """The recordings the viewer knows: ``sources`` (files and directories as given) and ``paths``, their
    expansion at the latest :meth:`scan` (until the first scan, the start-up list ``paths``, default the
    expansion now).

    A scan re-expands the sources and reads an :class:`Entry` only for a file that is new or whose
    (size, mtime_ns) changed; the other entries come from the previous scan. Scans may run in worker threads;
    they run one at a time.
    """

    def __init__(self, sources: Sequence[Path], paths: Sequence[Path] | None = None) -> None:
        self.sources = list(sources)
        self.paths = list(expand(self.sources) if paths is None else paths)
        self._cache: dict[Path, tuple[tuple[int, int], Entry]] = {}
        self._lock = threading.Lock()

    def scan(self) -> list[Entry]:
        """Expand the sources again; one entry per recording found, in expansion order (updates ``paths``)."""
        with self._lock:
            cache: dict[Path, tuple[tuple[int, int], Entry]] = {}
            for path in expand(self.sources):
                try:
                    st = path.stat()
                except OSError:  # deleted since it was listed
                    continue
                key = (st.st_size, st.st_mtime_ns)
                hit = self._cache.get(path)
                cache[path] = hit if hit is not None and hit[0] == key else (key, Entry.read(path))
            self._cache = cache
            self.paths = list(cache)
            return [entry for _, entry in cache.values()]


class RecordingsScreen(Screen[None]):
    """A tree of the catalog's recordings; enter opens one, m marks up to four for compare, c compares, s opens
    stats, r rescans (as it does by itself every ``RESCAN_SECONDS`` while it is the active screen)."""

    class OpenRun(Message):
        """Open the run view of ``path`` (handled by the app)."""

        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    class OpenCompare(Message):
        """Open the compare view of ``paths`` (2–4 recordings)."""

        def __init__(self, paths: list[Path]) -> None:
            super().__init__()
            self.paths = paths

    class OpenStats(Message):
        """Open the statistics screen over ``paths``."""

        def __init__(self, paths: list[Path]) -> None:
            super().__init__()
            self.paths = paths

    BINDINGS = [
        Binding("m", "mark", "mark"),
        Binding("c", "compare", "compare marked"),
        Binding("s", "stats", "stats"),
        Binding("r", "rescan", "rescan"),
    ]

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog
        self.entries: dict[Path, Entry] = {}
        self.marked: list[Path] = []
        self._scanner: Worker[None] | None = None
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        tree: Tree[Path] = Tree("recordings", id="recordings")
        tree.show_root = False
        yield tree
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Tree).loading = True
        self._timer = self.set_interval(RESCAN_SECONDS, self._rescan_if_idle)
        self.action_rescan()

    def on_screen_resume(self) -> None:
        if self._timer is not None:  # back from another screen: look now, then every few seconds
            self._timer.resume()
            self._rescan_if_idle()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def action_rescan(self) -> None:
        """Expand the sources again and rebuild the tree (marks of recordings still readable stay)."""
        self._scanner = self._scan()

    def _rescan_if_idle(self) -> None:
        if self._scanner is None or self._scanner.is_finished:
            self.action_rescan()

    @work(thread=True, exclusive=True)
    def _scan(self) -> None:
        entries = self.catalog.scan()
        if not get_current_worker().is_cancelled:  # a newer scan (r pressed meanwhile) shows its own
            self.app.call_from_thread(self._show, entries)

    def _show(self, entries: list[Entry]) -> None:
        tree: Tree[Path] = self.query_one(Tree)
        tree.loading = False
        found = {e.path: e for e in entries}
        if found == self.entries:
            return  # nothing changed: the tree, its cursor and folds stay as they are
        self.entries = found
        self.marked = [p for p in self.marked if p in found and not found[p].error]
        at = tree.cursor_node.data if tree.cursor_node is not None else None
        line = tree.cursor_line
        tree.clear()
        leaves: dict[Path, TreeNode[Path]] = {}
        groups: dict[tuple[str, str], list[Entry]] = {}
        for e in entries:
            if e.error:
                leaves[e.path] = tree.root.add_leaf(clean(f"✗ {e.path.name}: unreadable"), data=e.path)
            else:
                groups.setdefault((e.method, e.variant), []).append(e)
        methods: dict[str, TreeNode[Path]] = {}
        for (method, variant), group in sorted(groups.items()):
            if method not in methods:
                methods[method] = tree.root.add(method, expand=True)
            node = methods[method].add(variant, expand=True)
            for e in sorted(group, key=lambda e: e.seed):
                leaves[e.path] = node.add_leaf(self._label(e.path), data=e.path)
        tree.root.expand()

        def keep_cursor() -> None:  # on its recording, else on its line; node lines exist after a refresh
            if at in leaves:
                tree.move_cursor(leaves[at])
            elif line >= 0:
                tree.cursor_line = line

        tree.call_after_refresh(keep_cursor)

    def _label(self, path: Path) -> str:
        return ("✓ " if path in self.marked else "") + self.entries[path].label

    def on_tree_node_selected(self, message: Tree.NodeSelected[Path]) -> None:
        if message.node.data is not None:
            self.post_message(self.OpenRun(message.node.data))

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
        node.set_label(self._label(path))

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two to four recordings with m first", severity="warning")
            return
        self.post_message(self.OpenCompare(list(self.marked)))

    def action_stats(self) -> None:
        self.post_message(self.OpenStats([e.path for e in self.entries.values() if not e.error]))
