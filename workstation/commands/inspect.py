"""``ws inspect``: what a recording holds (format, status, steps, groups, gate sets, config, last eval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def inspect(
    paths: Annotated[list[Path], typer.Argument(help="Recordings (.h5) or directories of them.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show what a recording holds: identity, status, sizes, parameter groups, gate sets and the last eval."""
    from recorders.recording_format import Recording, iter_recordings

    summaries = []
    for path in iter_recordings(paths):
        with Recording.open(path) as rec:
            summaries.append(rec.summary())
    if as_json:
        typer.echo(json.dumps(summaries if len(summaries) != 1 else summaries[0], indent=2))
        return
    from workstation.render import print_summary

    for summary in summaries:
        print_summary(summary)
