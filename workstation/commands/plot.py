"""``ws plot``: paper figures of gates, gradient ratio and its factors, gate movement, gate variance or accuracy,
seeds as mean and band."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def plot(
    paths: Annotated[list[Path], typer.Argument(help="Recordings (.h5) or directories of them.")],
    kind: Annotated[
        str,
        typer.Option(
            help="gates, ratio, variance, accuracy, factors (the ratio's 3 factors), movement (gradient vs decay)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output file: .png, .pdf or .svg.")],
    by: Annotated[str, typer.Option(help="One curve per value of this key (seeds averaged).")] = "method",
    gate_set: Annotated[
        str | None,
        typer.Option(help="Gate set the gate kinds draw (e.g. depth_gates); default: each recording's first."),
    ] = None,
) -> None:
    """Draw one curve per group of runs (mean over seeds with a ±1 std band) and save it for a paper."""
    from recorders.format.errors import ConfigError
    from recorders.format.writer import check_output_dir

    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass a file name ending in .png, .pdf or .svg")
    check_output_dir(out)  # before reading any recording
    from analyses.figures import plot_runs

    typer.echo(f"wrote {plot_runs(paths, kind, out, by=by, gate_set=gate_set)}")
