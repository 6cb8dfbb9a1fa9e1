"""``ws stats``: compare groups of recordings across seeds (the numbers: ``analyses.stats.compare``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer


def stats(
    paths: Annotated[list[Path], typer.Argument(help="Recordings (.h5) or directories of them.")],
    by: Annotated[str, typer.Option(help="Grouping key: method, dataset, seed or a (dotted) config key.")],
    metric: Annotated[str, typer.Option(help="final_hm, best_hm, final_base, ..., late_ratio, ...")],
    baseline: Annotated[str | None, typer.Option(help="Compare every group against this one.")] = None,
    paired: Annotated[bool, typer.Option("--paired", help="Also run paired tests (by seed).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the comparisons as CSV.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown tables.")] = False,
    include_incomplete: Annotated[
        bool, typer.Option("--include-incomplete", help="Use running and failed recordings too.")
    ] = False,
    correction: Annotated[str, typer.Option(help="auto, holm, bh or none.")] = "auto",
) -> None:
    """Compare groups of runs on one metric, the seed as the unit: tests, effect sizes, small-n warnings."""
    from analyses.stats import compare
    from recorders.format.errors import ConfigError

    if as_json + as_csv + as_markdown > 1:
        raise ConfigError("choose one of --json, --csv and --markdown")
    report = compare(
        paths,
        by,
        metric,
        baseline=baseline,
        paired=paired,
        include_incomplete=include_incomplete,
        correction=correction,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif as_csv:
        typer.echo(report.to_csv(), nl=False)
    elif as_markdown:
        typer.echo(report.to_markdown(), nl=False)
    else:
        print_report(report)


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"


def print_report(report) -> None:  # noqa: ANN001 (ComparisonReport; imported lazily)
    """Print a comparison report as rich tables: groups, comparisons, warnings, exclusions."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from workstation.safe_text import clean

    console = Console()
    title = f"{report.metric} by {report.by}" + (f" (baseline {report.baseline})" if report.baseline else "")
    groups = Table(title=escape(clean(title)), title_justify="left")
    for column in ("group", "n", "seeds", "values", "mean ± std", "95% t-interval", "IQM"):
        groups.add_column(column)
    for g in report.groups.values():
        values = ", ".join(_fmt(v) for v in g.values)
        groups.add_row(
            escape(clean(g.name)),
            str(g.n),
            ", ".join(map(str, g.seeds)),
            values,
            f"{_fmt(g.mean)} ± {_fmt(g.std)}",
            f"[{_fmt(g.ci_low)}, {_fmt(g.ci_high)}]",
            _fmt(g.iqm),
        )
    console.print(groups)
    rows = Table(title="comparisons (differences are first − second)", title_justify="left")
    for column in (
        "comparison",
        "diff",
        "Welch p",
        "perm p",
        "MWU p",
        "paired t p",
        "Wilcoxon p",
        "Hedges g",
        "P(improve) [95%]",
        "adj. p",
    ):
        rows.add_column(column)
    for r in report.rows:
        perm = _fmt(r.perm_p) + ("" if r.perm_resamples is None else f" (MC {r.perm_resamples})")
        rows.add_row(
            escape(clean(f"{r.a} vs {r.b}")),
            _fmt(r.mean_diff),
            _fmt(r.welch_p),
            perm,
            _fmt(r.mwu_p),
            _fmt(r.paired_p),
            _fmt(r.wilcoxon_p),
            _fmt(r.hedges_g),
            f"{_fmt(r.prob_improvement)} [{_fmt(r.pi_low)}, {_fmt(r.pi_high)}]",
            f"{_fmt(r.p_adjusted)} ({r.correction})",
        )
    console.print(rows)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(clean(line))}")
    for line in report.excluded:
        console.print(f"[dim]excluded {escape(clean(line))}[/]")
