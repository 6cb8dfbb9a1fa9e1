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
    from recorders.format import Recording, iter_recordings

    summaries = []
    for path in iter_recordings(paths):
        with Recording.open(path) as rec:
            summaries.append({**rec.summary(), "diagnostics": _diagnostics(rec)})
    if as_json:
        typer.echo(json.dumps(summaries if len(summaries) != 1 else summaries[0], indent=2))
        return
    from workstation.render import print_summary

    for summary in summaries:
        print_summary(summary)
        _print_diagnostics(summary["diagnostics"])


# ---------------------------------------------------------------------- collapse diagnostics (analyses)
def _diagnostics(rec) -> dict:  # noqa: ANN001 (a Recording)
    """JSON-ready collapse diagnostics and verdict per gate set (see ``analyses.diagnostics``)."""
    from analyses.diagnostics import diagnose

    return diagnose(rec).to_dict()


def _print_diagnostics(d: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from workstation.safe_text import clean

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    console = Console()
    if not d["gate_sets"]:
        console.print(
            "diagnostics: no gate sets (non-gate facts only: final loss "
            f"{fmt(d['final_loss'])}, non-finite events {d['nonfinite_events']})"
        )
        return
    table = Table(title="collapse diagnostics", title_justify="left")
    for column in (
        "gate set",
        "verdict",
        "onset step",
        "ratio early/mid/late",
        "saturated",
        "L_eff",
        "Δlogit grad / decay",
        "reasons",
    ):
        table.add_column(column, no_wrap=column in ("gate set", "verdict"), overflow="fold")
    colours = {"collapsed": "red", "adaptive": "green", "inconclusive": "yellow"}
    for name, g in d["gate_sets"].items():
        final = g.get("final", {})
        ph = g["phases"]
        grad = max((abs(x) for x in g["grad_displacement"] if x is not None), default=None)
        decay = max((abs(x) for x in g["decay_displacement"] if x is not None), default=None)
        reasons = ", ".join(f"{k}={fmt(v)}" for k, v in g["reasons"].items())
        table.add_row(
            escape(f"{clean(name)} [{clean(g['kind'])}]"),
            f"[{colours[g['verdict']]}]{g['verdict']}[/]",
            "-" if g["onset_step"] is None else str(g["onset_step"]),
            " / ".join(fmt(ph[k]) for k in ("early", "middle", "late")),
            fmt(final.get("saturated_fraction")),
            fmt(final.get("l_eff")),
            f"{fmt(grad)} / {fmt(decay)}",
            escape(clean(reasons)),
        )
    console.print(table)
