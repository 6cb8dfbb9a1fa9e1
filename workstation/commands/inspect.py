"""``ws inspect``: what a recording holds (format, status, steps, groups, gate sets, config, last eval) and its
collapse verdict, one line per criterion (computed in :mod:`analyses.verdict`; ``--json`` has every number)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import numpy as np

    from analyses.diagnostics import GateSetDiagnostics, RecordingDiagnostics
    from recorders.format import Recording


def inspect(
    paths: Annotated[list[Path], typer.Argument(help="Recordings (.h5) or directories of them.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show what a recording holds: identity, status, sizes, parameter groups, gate sets and the last eval."""
    from recorders.format import Recording, iter_recordings

    summaries = []
    for path in iter_recordings(paths):
        with Recording.open(path) as rec:
            diagnosis, mechanism = _diagnostics(rec), _mechanism(rec)
            summary = rec.summary()  # after the analyses: their reads fill ``damaged`` and ``unchecked``
            summaries.append((summary, diagnosis, mechanism))
    if as_json:
        dicts = [
            {**summary, "diagnostics": _diagnostics_dict(diagnosis), "mechanism": mechanism}
            for summary, diagnosis, mechanism in summaries
        ]
        typer.echo(json.dumps(dicts if len(dicts) != 1 else dicts[0], indent=2))
        return
    from workstation.render import print_summary

    for summary, diagnosis, mechanism in summaries:
        print_summary(summary)
        _print_diagnostics(diagnosis)
        _print_mechanism(mechanism)


# ---------------------------------------------------------------------- collapse diagnostics (analyses)
def _diagnostics(rec: Recording) -> RecordingDiagnostics | str:
    """Collapse diagnostics and verdict per gate set (see ``analyses.diagnostics``), or, for a recording damaged in
    a part the diagnostics need, the one-line reason."""
    from analyses.diagnostics import diagnose
    from recorders.format.errors import RecordingError

    try:
        return diagnose(rec)
    except RecordingError as exc:
        return str(exc)


def _diagnostics_dict(d: RecordingDiagnostics | str) -> dict[str, Any]:
    """The JSON form: ``RecordingDiagnostics.to_dict()``, or ``{"unavailable": reason}``."""
    return {"unavailable": d} if isinstance(d, str) else d.to_dict()


def _print_diagnostics(d: RecordingDiagnostics | str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from workstation.render import number
    from workstation.safe_text import clean

    def fmt(v: float | None) -> str:
        return number(v, 3)

    console = Console()
    if isinstance(d, str):
        console.print(f"[red]diagnostics unavailable:[/] {escape(clean(d))}")
        return
    if not d.gate_sets:
        console.print(
            f"diagnostics: no gate sets (non-gate facts only: final loss {fmt(d.final_loss)}, "
            f"non-finite events {d.nonfinite_events})"
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
    for name, g in d.gate_sets.items():
        table.add_row(
            escape(f"{clean(name)} [{clean(g.kind)}]"),
            f"[{colours[g.verdict]}]{g.verdict}[/]",
            "-" if g.onset_step is None else str(g.onset_step),
            " / ".join(fmt(g.phases[k]) for k in ("early", "middle", "late")),
            fmt(_last(g.saturated_fraction)),
            fmt(_last(g.l_eff)),
            f"{fmt(_largest(g.grad_displacement))} / {fmt(_largest(g.decay_displacement))}",
        )
    console.print(table)
    for g in d.gate_sets.values():
        for line in verdict_lines(g):
            console.print(escape(clean(line)), highlight=False, soft_wrap=True)
    best = d.best_eval
    if best is not None:
        console.print(
            f"best (validation {best['val_acc']:.2%} at step {best['step']}): base {best['base_acc']:.2%}  "
            f"novel {best['novel_acc']:.2%}  HM {best['hm']:.2%}",
            highlight=False,
        )
    else:
        console.print("best: not recorded (no validation scores in this recording)", highlight=False)


def _last(series: np.ndarray) -> float | None:
    """The series' last value (None for an empty series or a value that is not finite)."""
    import math

    return float(series[-1]) if len(series) and math.isfinite(series[-1]) else None


def _largest(values: np.ndarray) -> float | None:
    """The largest |value| that is measured (None when none is)."""
    import numpy as np

    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if len(finite) else None


def verdict_lines(g: GateSetDiagnostics) -> list[str]:
    """The verdict of one gate set with one line per criterion and one per missing piece of evidence."""
    onset = "" if g.onset_step is None else f", onset at step {g.onset_step}"
    lines = [f"{g.name}: {g.verdict}{onset}"]
    marks = {True: "yes", False: "no ", None: "n/a"}
    if g.evidence is not None:
        lines += [f"  {marks[c.holds]} {c.name}: {c.text}" for c in g.evidence.criteria]
        lines += [f"  missing: {m}" for m in g.evidence.missing]
    return lines


# ---------------------------------------------------------------------- why the ratio is small (analyses.mechanism)
def _mechanism(rec: Recording) -> dict[str, Any]:
    """JSON-ready ratio factors per phase, loss-term shares and movement attribution per gate set."""
    from analyses.mechanism import mechanism
    from recorders.format.errors import RecordingError

    try:
        return mechanism(rec)
    except RecordingError as exc:
        return {"unavailable": str(exc)}


def _print_mechanism(m: dict[str, Any]) -> None:
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
