"""Rendering for the headless commands: numbers, tables, CSV and Markdown (analyses return data, this renders it)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workstation.safe_text import clean

if TYPE_CHECKING:
    from analyses.stats import ComparisonReport

console = Console()


def number(value: float | None, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits; ``-`` for a missing (None, NaN or infinite) number."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def config_summary(config: dict[str, Any], limit: int = 16) -> str:
    """``key=value`` pairs of a run config, nested keys joined with ``.``, at most ``limit`` shown."""
    pairs: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            pairs.append(clean(f"{prefix[:-1]}={value}"))

    walk("", config)
    more = f" … (+{len(pairs) - limit} more; --json shows all)" if len(pairs) > limit else ""
    return ", ".join(pairs[:limit]) + more if pairs else "-"


def print_summary(s: dict[str, Any]) -> None:
    """Print a recording summary (as returned by ``Recording.summary``) as a rich table (every value passed
    through :func:`~workstation.safe_text.clean`: a recording's strings never reach the terminal raw)."""
    table = Table(title=escape(clean(s["path"])), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    ev = s["last_eval"]
    rows = [
        ("format", f"{s['format']} v{s['schema_version']} ({s['ws_version']})"),
        ("status", s["status"] + (f" — {s['error']}" if s["error"] else "")),
        ("method / dataset / seed", f"{s['method']} / {s['dataset'] or '-'} / {s['seed']}"),
        ("device, created", f"{s['device']}, {s['created']}"),
        (
            "rows (steps)",
            f"{s['rows']}" + (f"  (step {s['step_range'][0]}…{s['step_range'][1]})" if s["step_range"] else ""),
        ),
        ("loss terms", ", ".join(s["loss_terms"])),
        ("groups", ", ".join(f"{k} [{v['role']}, {v['n_params']:,} params]" for k, v in s["groups"].items()) or "-"),
        ("gate sets", ", ".join(f"{k} [{v['kind']} × {v['n_gates']}]" for k, v in s["gate_sets"].items()) or "-"),
        ("prompts", ", ".join(f"{k} [{v} tokens]" for k, v in s["prompts"].items()) or "-"),
        ("config", config_summary(s["config"])),
        (
            "last eval",
            "-"
            if ev is None
            else f"step {ev['step']}: base {ev['base_acc']:.4f}  novel {ev['novel_acc']:.4f}  HM {ev['hm']:.4f}",
        ),
        ("events", "unreadable" if s["events"] is None else str(s["events"])),
    ]
    damaged = s.get("damaged") or {}
    if damaged:
        rows.append(("damaged", "; ".join(f"{part}: {reason}" for part, reason in damaged.items())))
    unchecked = s.get("unchecked") or {}
    if unchecked:  # a killed writer's torn last chunk, verified against the previous flush's checksum
        rows.append(("last chunk", f"{', '.join(unchecked)}: {next(iter(unchecked.values()))}"))
    for key, value in rows:
        table.add_row(f"[red]{key}[/]" if key == "damaged" else key, escape(clean(value)))
    console.print(table)


def comparison_csv(report: ComparisonReport) -> str:
    """One line per comparison, with both groups' n, mean and std."""
    from analyses.stats import ComparisonRow  # scipy: not at `ws --help`

    out = io.StringIO()
    fields = list(ComparisonRow.__dataclass_fields__)
    writer = csv.DictWriter(out, [*fields[:4], "mean_a", "std_a", "mean_b", "std_b", *fields[4:]], lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        a, b = report.groups[row.a], report.groups[row.b]
        sides = {"mean_a": a.mean, "std_a": a.std, "mean_b": b.mean, "std_b": b.std}
        writer.writerow({**asdict(row), **sides})
    return out.getvalue()


def comparison_markdown(report: ComparisonReport) -> str:
    """Two GitHub-markdown tables (groups, comparisons) and the warnings as a list."""
    title = f"**{report.metric}** by **{report.by}**"
    if report.baseline is not None:
        title += f", baseline **{report.baseline}**"
    lines = [
        title,
        "",
        "| group | n | seeds | values | mean ± std | 95% CI | IQM |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in report.groups.values():
        lines.append(
            f"| {g.name} | {g.n} | {', '.join(map(str, g.seeds))} | "
            f"{', '.join(number(v) for v in g.values)} | {number(g.mean)} ± {number(g.std)} | "
            f"[{number(g.ci_low)}, {number(g.ci_high)}] | {number(g.iqm)} |"
        )
    lines += [
        "",
        "| comparison | diff | Welch p | perm p | MWU p | paired t p | Wilcoxon p | Hedges g | "
        "P(improve) [95% CI] | adj. p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.a} vs {r.b} | {number(r.mean_diff)} | {number(r.welch_p)} | {number(r.perm_p)}"
            f"{'' if r.perm_resamples is None else ' (MC)'} | {number(r.mwu_p)} | "
            f"{number(r.paired_p)} | {number(r.wilcoxon_p)} | {number(r.hedges_g)} | "
            f"{number(r.prob_improvement)} [{number(r.pi_low)}, {number(r.pi_high)}] | "
            f"{number(r.p_adjusted)} ({r.correction}) |"
        )
    lines += [""] + [f"- {w}" for w in report.warnings + [f"excluded {e}" for e in report.excluded]]
    return "\n".join(lines).rstrip() + "\n"
