"""``ws stats``: compare groups of recordings across seeds (the numbers: ``analyses.stats.compare``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workstation.render import comparison_csv, comparison_markdown, number


def stats(
    paths: Annotated[list[Path], typer.Argument(help="Recordings (.h5) or directories of them.")],
    by: Annotated[str, typer.Option(help="Grouping key: method, dataset, seed or a (dotted) config key.")],
    metric: Annotated[
        str,
        typer.Option(
            help="final_hm, best_hm (test scores at the best validation accuracy), final_base, ..., "
            "cf_init_drop_hm, cf_mean_drop_hm, gradient_movement, late_ratio, ..."
        ),
    ],
    baseline: Annotated[str | None, typer.Option(help="Compare every group against this one.")] = None,
    paired: Annotated[bool, typer.Option("--paired", help="Also run paired tests (by seed).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the comparisons as CSV.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown tables.")] = False,
    include_incomplete: Annotated[
        bool, typer.Option("--include-incomplete", help="Use running and failed recordings too.")
    ] = False,
    correction: Annotated[str, typer.Option(help="auto, holm, bh or none.")] = "auto",
    strict: Annotated[
        bool, typer.Option("--strict", help="A damaged recording is an error (default: skipped with a warning).")
    ] = False,
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
        skip_damaged=None if strict else _warn_skipped,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif as_csv:
        typer.echo(comparison_csv(report), nl=False)
    elif as_markdown:
        typer.echo(comparison_markdown(report), nl=False)
    else:
        print_report(report)


def _warn_skipped(exc: Exception) -> None:
    """Say on stderr, at once, that a damaged recording is left out (``--strict`` makes it an error)."""
    typer.echo(f"ws: warning: skipped {exc} (--strict makes this an error)", err=True)


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
        values = ", ".join(number(v) for v in g.values)
        groups.add_row(
            escape(clean(g.name)),
            str(g.n),
            ", ".join(map(str, g.seeds)),
            values,
            f"{number(g.mean)} ± {number(g.std)}",
            f"[{number(g.ci_low)}, {number(g.ci_high)}]",
            number(g.iqm),
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
        perm = number(r.perm_p) + ("" if r.perm_resamples is None else f" (MC {r.perm_resamples})")
        rows.add_row(
            escape(clean(f"{r.a} vs {r.b}")),
            number(r.mean_diff),
            number(r.welch_p),
            perm,
            number(r.mwu_p),
            number(r.paired_p),
            number(r.wilcoxon_p),
            number(r.hedges_g),
            f"{number(r.prob_improvement)} [{number(r.pi_low)}, {number(r.pi_high)}]",
            f"{number(r.p_adjusted)} ({r.correction})",
        )
    console.print(rows)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(clean(line))}")
    for line in report.excluded:
        console.print(f"[dim]excluded {escape(clean(line))}[/]")
