"""``ws inspect``: what a recording holds (format, status, steps, groups, gate sets, config, last eval) and its
collapse verdict, one line per criterion (computed in :mod:`analyses.verdict`; ``--json`` has every number)."""

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
            found = {"diagnostics": _diagnostics(rec), "mechanism": _mechanism(rec)}
            summary = rec.summary()  # after the analyses: their reads fill ``damaged`` and ``unchecked``
            summaries.append({**summary, **found})
    if as_json:
        typer.echo(json.dumps(summaries if len(summaries) != 1 else summaries[0], indent=2))
        return
    from workstation.render import print_summary

    for summary in summaries:
        print_summary(summary)
        _print_diagnostics(summary["diagnostics"])
        _print_mechanism(summary["mechanism"])


# ---------------------------------------------------------------------- collapse diagnostics (analyses)
def _diagnostics(rec) -> dict:  # noqa: ANN001 (a Recording)
    """JSON-ready collapse diagnostics and verdict per gate set (see ``analyses.diagnostics``); for a recording
    damaged in a part the diagnostics need, ``{"unavailable": reason}``."""
    from analyses.diagnostics import diagnose
    from recorders.format.errors import RecordingError

    try:
        return diagnose(rec).to_dict()
    except RecordingError as exc:
        return {"unavailable": str(exc)}


def _print_diagnostics(d: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from workstation.render import number
    from workstation.safe_text import clean

    def fmt(v: float | None) -> str:
        return number(v, 3)

    console = Console()
    if "unavailable" in d:
        console.print(f"[red]diagnostics unavailable:[/] {escape(clean(d['unavailable']))}")
        return
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
    ):
        table.add_column(column, no_wrap=column in ("gate set", "verdict"), overflow="fold")
    colours = {"collapsed": "red", "adaptive": "green", "inconclusive": "yellow"}
    for name, g in d["gate_sets"].items():
        final = g.get("final", {})
        ph = g["phases"]
        grad = max((abs(x) for x in g["grad_displacement"] if x is not None), default=None)
        decay = max((abs(x) for x in g["decay_displacement"] if x is not None), default=None)
        table.add_row(
            escape(f"{clean(name)} [{clean(g['kind'])}]"),
            f"[{colours[g['verdict']]}]{g['verdict']}[/]",
            "-" if g["onset_step"] is None else str(g["onset_step"]),
            " / ".join(fmt(ph[k]) for k in ("early", "middle", "late")),
            fmt(final.get("saturated_fraction")),
            fmt(final.get("l_eff")),
            f"{fmt(grad)} / {fmt(decay)}",
        )
    console.print(table)
    for name, g in d["gate_sets"].items():
        for line in verdict_lines(name, g):
            console.print(escape(clean(line)), highlight=False, soft_wrap=True)
    best = d.get("best_eval")
    if best is not None:
        console.print(
            f"best (validation {best['val_acc']:.2%} at step {best['step']}): base {best['base_acc']:.2%}  "
            f"novel {best['novel_acc']:.2%}  HM {best['hm']:.2%}",
            highlight=False,
        )
    else:
        console.print("best: not recorded (no validation scores in this recording)", highlight=False)


def verdict_lines(name: str, g: dict) -> list[str]:
    """The verdict of one gate set (a ``GateSetDiagnostics.to_dict()``) with one line per criterion."""
    ev = g.get("evidence") or {}
    onset = "" if g["onset_step"] is None else f", onset at step {g['onset_step']}"
    lines = [f"{name}: {g['verdict']}{onset}"]
    marks = {True: "yes", False: "no ", None: "n/a"}
    for c in ev.get("criteria", []):
        lines.append(f"  {marks[c['holds']]} {c['name']}: {c['text']}")
    for m in ev.get("missing", []):
        lines.append(f"  missing: {m}")
    return lines


# ---------------------------------------------------------------------- why the ratio is small (analyses.mechanism)
def _mechanism(rec) -> dict:  # noqa: ANN001 (a Recording)
    """JSON-ready ratio factors per phase, loss-term shares and movement attribution per gate set."""
    from analyses.mechanism import mechanism
    from recorders.format.errors import RecordingError

    try:
        return mechanism(rec)
    except RecordingError as exc:
        return {"unavailable": str(exc)}


def _print_mechanism(m: dict) -> None:
    """One line per gate set naming the factor that holds the gate/prompt ratio down (late phase)."""
    from rich.console import Console
    from rich.markup import escape

    from workstation.safe_text import clean

    console = Console()
    if "unavailable" in m:
        console.print(escape(clean(f"ratio factors: unavailable ({m['unavailable']})")), highlight=False)
        return
    for g in m.values():
        move = ", ".join(
            f"{part} decay {v['decay']:.3g} / rest {v['rest']:.3g}"
            for part, v in g["movement"].items()
            if v["decay"] is not None and v["rest"] is not None
        )
        console.print(escape(clean(g["factors"]["line"] + (f"; movement: {move}" if move else ""))), highlight=False)
