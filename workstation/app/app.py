"""The ws viewer application: screens for recordings, one run, a comparison and statistics across seeds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from recorders.format.errors import WsError
from workstation.app.data import RunData
from workstation.app.screens.recordings import Catalog, RecordingsScreen
from workstation.safe_text import clean

Command = tuple[str, str, Callable[[], object]]


class WsCommands(Provider):
    """ws's own commands in the ctrl+p palette: open, compare, stats, export."""

    def _commands(self) -> Iterator[Command]:
        app = self.app
        assert isinstance(app, WsApp)
        yield from app.ws_commands()

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class WsApp(App[None]):
    """``ws view``: ``paths`` are recordings (already expanded from ``sources``, the files and directories as
    given; default ``paths`` itself).

    One path opens its run view, ``compare`` with 2–4 paths opens the compare view, otherwise the recordings
    pane. The recordings pane rescans ``sources``, and from then on :attr:`paths` is its latest scan.
    ``live_interval`` is the seconds between refreshes of running recordings; ``export_dir`` is where SVG and
    PNG exports go.
    """

    TITLE = "ws view"
    CSS_PATH = Path(__file__).parent / "styles" / "app.tcss"  # absolute: subclasses elsewhere find it
    COMMANDS = App.COMMANDS | {WsCommands}
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("f1,question_mark", "help", "help"),
        Binding("ctrl+s", "export_svg", "save SVG", show=False),
        Binding("escape", "back", "back", show=False),
    ]

    def __init__(
        self,
        paths: list[Path],
        *,
        sources: list[Path] | None = None,
        compare: bool = False,
        sync: str = "step",
        live_interval: float = 1.0,
        export_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.catalog = Catalog(paths if sources is None else sources, paths)
        self.compare = compare
        self.sync = sync
        self.live_interval = live_interval
        self.export_dir = export_dir or Path.cwd()

    @property
    def paths(self) -> list[Path]:
        """The recordings known now: the start-up list until the recordings pane has scanned, then its latest
        scan."""
        return self.catalog.paths

    def on_mount(self) -> None:
        # Straight to the run or comparison asked for; the recordings pane is built when escape asks for it
        # (mounting it underneath cost ~0.2 s of the first paint on two cores).
        if self.compare and 2 <= len(self.paths) <= 4:
            opened = self.open_compare(self.paths)
        else:
            opened = len(self.paths) == 1 and self.open_run(self.paths[0])
        if not opened:
            self.push_screen(RecordingsScreen(self.catalog))

    def _open(self, path: Path) -> RunData | None:
        try:
            return RunData.open(str(path))
        except WsError as exc:
            self.notify(clean(exc), title="cannot open recording", severity="error", timeout=10)
            return None

    def open_run(self, path: Path) -> bool:
        """Push the run view of ``path``; a file that cannot be read becomes an error notification."""
        from workstation.app.screens.run import RunScreen

        run = self._open(path)
        if run is not None:
            self.push_screen(RunScreen(run))
        return run is not None

    def open_compare(self, paths: list[Path]) -> bool:
        """Push the compare view of 2–4 recordings."""
        from workstation.app.screens.compare import CompareScreen

        runs = [run for run in map(self._open, paths) if run is not None]
        if len(runs) < 2:
            self.notify("compare needs at least two readable recordings", severity="warning")
            return False
        self.push_screen(CompareScreen(runs[:4], sync=self.sync))
        return True

    def open_stats(self, paths: list[Path]) -> None:
        """Push the statistics screen over ``paths``."""
        from workstation.app.screens.stats import StatsScreen

        self.push_screen(StatsScreen(paths))

    def on_recordings_screen_open_run(self, message: RecordingsScreen.OpenRun) -> None:
        self.open_run(message.path)

    def on_recordings_screen_open_compare(self, message: RecordingsScreen.OpenCompare) -> None:
        self.open_compare(message.paths)

    def on_recordings_screen_open_stats(self, message: RecordingsScreen.OpenStats) -> None:
        self.open_stats(message.paths)

    def ws_commands(self) -> Iterator[Command]:
        """The palette's commands for the current state."""
        for path in self.paths:
            yield clean(f"open {path.name}"), clean(f"run view of {path}"), partial(self.open_run, path)
        if 2 <= len(self.paths) <= 4:
            yield "compare all", "compare view of the recordings known", partial(self.open_compare, self.paths)
        marked = getattr(self.screen, "marked", [])
        if len(marked) >= 2:
            yield "compare marked", "compare view of the marked recordings", partial(self.open_compare, marked)
        yield "stats", "statistics across seeds (ws stats)", partial(self.open_stats, self.paths)
        yield "export SVG", "save the screen as an SVG file", self.action_export_svg
        export_png = getattr(self.screen, "action_export_png", None)
        if export_png is not None:
            yield "export PNG", "save the focused pane's plot as a PNG (analyses figures; ctrl+e)", export_png

    def _handle_exception(self, error: Exception) -> None:
        """A worker that failed on a damaged recording becomes an error notification, and the app keeps running;
        anything else ends the app as Textual does, with return code 1 (``ws view`` exits with it)."""
        from textual.worker import WorkerFailed

        if isinstance(error, WorkerFailed) and isinstance(error.error, WsError):
            self.notify(str(error.error), title="unreadable recording", severity="error", timeout=10)
            return
        super()._handle_exception(error)

    def action_help(self) -> None:
        from workstation.app.screens.help import HelpScreen  # markdown rendering: imported when first asked

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_back(self) -> None:
        """Escape: back to the previous screen, or from the first run or comparison to the recordings pane."""
        if len(self.screen_stack) > 2:
            self.pop_screen()
        elif not isinstance(self.screen, RecordingsScreen):
            self.switch_screen(RecordingsScreen(self.catalog))

    def action_export_svg(self) -> None:
        path = self.save_screenshot(path=str(self.export_dir))
        self.notify(f"saved {path}", title="export SVG")
