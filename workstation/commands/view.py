"""`ws view`: the Textual workstation (run view, compare, stats, live following)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from recorders.format.errors import ConfigError, RecordingError


def view(
    paths: list[Path] | None = typer.Argument(
        None, show_default=False, help="recordings (.h5) or directories holding them; default recordings/"
    ),
    compare: bool = typer.Option(False, "--compare", "-c", help="open 2–4 recordings side by side"),
    sync: str = typer.Option("step", help="compare cursor sync: 'step' or 'fraction' of training"),
    refresh: float = typer.Option(1.0, help="seconds between refreshes of running recordings"),
    theme: str = typer.Option("textual-dark", help="Textual theme, e.g. textual-dark, textual-light, nord"),
) -> None:
    """Replay recordings in the terminal: step through a run, compare variants, test across seeds."""
    from recorders.format import RECORDINGS_DIR, iter_recordings  # h5py: not at `ws --help`

    if sync not in ("step", "fraction"):
        raise ConfigError(f"--sync {sync!r} is not valid; use step or fraction")
    if not math.isfinite(refresh) or refresh <= 0:
        raise ConfigError(f"--refresh {refresh} is not valid; use a positive, finite number of seconds (e.g. 1)")
    sources = paths or [RECORDINGS_DIR]
    found = list(iter_recordings(sources)) if paths or RECORDINGS_DIR.is_dir() else []
    if not found:
        raise RecordingError(f"no .h5 recordings under {', '.join(map(str, sources))}; run `ws record` first")
    if compare and not 2 <= len(found) <= 4:
        raise ConfigError(f"--compare takes 2 to 4 recordings, got {len(found)}")
    from workstation.app.app import WsApp

    app = WsApp(found, sources=sources, compare=compare, sync=sync, live_interval=refresh)
    if theme not in app.available_themes:
        raise ConfigError(f"unknown theme {theme!r}; use one of {', '.join(sorted(app.available_themes))}")
    app.theme = theme
    app.run()
    if app.return_code:  # an unexpected error ended the app (Textual printed it): never exit 0 after one
        raise SystemExit(app.return_code)
