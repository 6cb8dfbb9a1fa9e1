"""Rendering of ``ws report``: a :class:`analyses.report.Study` as one Markdown or HTML file with PNG figures beside it.

The document is built once as a list of blocks (heading, paragraph, table, list, figure) and written by one of two
small writers, so both formats say the same thing. Figures use matplotlib's object API (no display needed); their
files are ``<out>/figures/*.png``, referenced by relative paths.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analyses.report import (
    CollapseRow,
    Study,
    StudyTable,
    arm_bands,
    arm_label,
    gate_heatmap,
    representative,
    slug,
)
from recorders.format.errors import ConfigError

FORMATS = ("md", "html")
STATUS_MARK = {"supported": "supported", "contradicted": "contradicted", "not tested": "not tested"}


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class TableBlock:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class ListBlock:
    items: list[str]


@dataclass
class FigureBlock:
    path: str  # relative to the report file
    caption: str


Block = Heading | Paragraph | TableBlock | ListBlock | FigureBlock


def write_report(study: Study, out: str | Path, fmt: str = "md") -> Path:
    """Write ``out/report.<fmt>`` and its figures under ``out/figures/``; return the report's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(study, out)
    text = to_markdown(blocks) if fmt == "md" else to_html(blocks, f"ws report: {study.directory}")
    path = out / f"report.{fmt}"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- the document
def build_blocks(study: Study, out: Path) -> list[Block]:
    """The report's blocks; draws the figures into ``out/figures`` on the way."""
    runs, datasets = study.runs, study.datasets
    blocks: list[Block] = [
        Heading(f"ws report: {study.directory}", 1),
        Paragraph(
            f"{len(runs)} complete runs on {', '.join(datasets)}; study axes: "
            f"{', '.join(a.removeprefix('tags.') for a in study.axes)}. The seed is the unit of analysis; "
            "accuracies are fractions in [0, 1]; HM = 2·base·novel/(base + novel) of the last evaluation."
        ),
    ]
    if study.incomplete:
        blocks += [
            Heading("Not complete"),
            Paragraph(
                f"{len(study.incomplete)} recording(s) or sweep run(s) are not complete and are left out of every "
                "number below; re-run the sweep (`ws batch SPEC` resumes it) and the report again."
            ),
            ListBlock(study.incomplete),
        ]
    blocks += [Heading("Claims"), Paragraph("Each claim's rule is in docs/report.md.")]
    blocks.append(
        TableBlock(
            ["claim", "dataset", "status", "evidence"],
            [[c.statement, c.dataset, STATUS_MARK[c.status], c.evidence] for c in study.claims],
        )
    )
    blocks.append(Heading("Comparisons"))
    blocks.append(
        Paragraph(
            "Per study axis, with the other axes held fixed: mean and 95% t-interval per group; each group minus "
            "the baseline with Welch's t and the exact permutation test, the Welch p Holm-adjusted over the "
            "table's comparisons, and the probability of improvement P(group > baseline). The same numbers as "
            "`ws stats PATHS --by AXIS --metric final_hm --baseline B --correction holm` on the table's recordings."
        )
    )
    for table in study.tables:
        blocks += _study_table(table)
    if study.skipped:
        blocks += [Heading("Not compared", 3), ListBlock(study.skipped)]
    blocks += [
        Heading("Collapse"),
        Paragraph(
            "Per arm: runs whose gates collapsed / adapted / stayed inconclusive (the collapse verdict), the "
            "gate/prompt gradient-norm ratio in the first and last third of training, the variance of gate "
            "values over time (mean over gates) and across inputs (instance gates, last third), and the mean "
            "per-token prompt gradient norm early and late, beside the fixed-prompt baselines'. Medians over seeds."
        ),
    ]
    for dataset in datasets:
        rows = [r for r in study.collapse if r.dataset == dataset]
        blocks += [Heading(dataset, 3), _collapse_table(rows)]
    blocks.append(Heading("Figures"))
    for dataset in datasets:
        blocks.append(Heading(dataset, 3))
        blocks += _figures(study, dataset, out)
    p = study.provenance
    backbones = [f"{b} (weights {', '.join(f or 'not recorded' for f in fps)})" for b, fps in p.backbones.items()]
    blocks += [
        Heading("Provenance"),
        ListBlock(
            [
                f"recordings: {p.directory}",
                f"ws version: {', '.join(p.ws_versions)}",
                f"backbone: {'; '.join(backbones)}",
                "data: " + "; ".join(f"{d}, base-to-novel split, {', '.join(s)} shots" for d, s in p.datasets.items()),
                f"seeds: {', '.join(map(str, p.seeds))}",
                f"command: {p.command or 'ws report'}",
            ]
        ),
    ]
    return blocks


def _study_table(table: StudyTable) -> list[Block]:
    hm, base, novel = (table.reports[m] for m in ("final_hm", "final_base", "final_novel"))
    title = f"{table.dataset} · {table.axis.removeprefix('tags.')}"
    if table.fixed:
        title += f" ({arm_label(table.fixed)})"
    groups = TableBlock(
        ["group", "n", "seeds", "HM mean [95% CI]", "base mean [95% CI]", "novel mean [95% CI]"],
        [
            [
                name + (" (baseline)" if name == table.baseline else ""),
                str(g.n),
                ", ".join(map(str, g.seeds)),
                _interval(g.mean, g.ci_low, g.ci_high),
                _interval(base.groups[name].mean, base.groups[name].ci_low, base.groups[name].ci_high),
                _interval(novel.groups[name].mean, novel.groups[name].ci_low, novel.groups[name].ci_high),
            ]
            for name, g in hm.groups.items()
        ],
    )
    by_pair = lambda report: {(r.a, r.b): r for r in report.rows}  # noqa: E731
    base_rows, novel_rows = by_pair(base), by_pair(novel)
    comparisons = TableBlock(
        ["comparison", "ΔHM", "Welch p", "perm p", "adj. p", "P(improve) [95%]", "Δbase", "Δnovel"],
        [
            [
                f"{r.a} − {r.b}",
                _num(r.mean_diff, "+.4f"),
                _num(r.welch_p),
                _num(r.perm_p) + ("" if r.perm_resamples is None else " (MC)"),
                f"{_num(r.p_adjusted)} ({r.correction})",
                f"{_num(r.prob_improvement, '.2f')} [{_num(r.pi_low, '.2f')}, {_num(r.pi_high, '.2f')}]",
                _num(base_rows[(r.a, r.b)].mean_diff, "+.4f"),
                _num(novel_rows[(r.a, r.b)].mean_diff, "+.4f"),
            ]
            for r in hm.rows
        ],
    )
    notes = hm.warnings + [f"excluded {e}" for e in hm.excluded]
    blocks: list[Block] = [Heading(title, 3), groups, comparisons]
    return blocks + ([ListBlock(notes)] if notes else [])


def _collapse_table(rows: list[CollapseRow]) -> TableBlock:
    return TableBlock(
        [
            "arm",
            "n",
            "collapsed",
            "adaptive",
            "inconclusive",
            "ratio early",
            "ratio late",
            "var(σ) over time",
            "var(σ) across inputs",
            "‖∂L/∂p‖ early",
            "‖∂L/∂p‖ late",
        ],
        [
            [
                r.label + ("" if r.gated else " (no gates)"),
                str(r.n),
                *([f"{r.collapsed}/{r.n}", f"{r.adaptive}/{r.n}", f"{r.inconclusive}/{r.n}"] if r.gated else ["-"] * 3),
                _num(r.early_ratio),
                _num(r.late_ratio),
                _num(r.var_time),
                _num(r.var_inputs),
                _num(r.prompt_grad_early),
                _num(r.prompt_grad_late),
            ]
            for r in rows
        ],
    )


# ---------------------------------------------------------------------------------------------- figures
def _figures(study: Study, dataset: str, out: Path) -> list[Block]:
    from matplotlib.figure import Figure

    runs = [r for r in study.runs if r.dataset == dataset]
    blocks: list[Block] = []
    ratio, gates = arm_bands([r for r in runs if r.gated], "ratio"), arm_bands([r for r in runs if r.gated], "gates")
    if ratio or gates:
        fig = Figure(figsize=(11, 4.0), layout="constrained")
        left, right = fig.subplots(1, 2)
        _draw_bands(left, ratio, "|∂L/∂g| / ‖∂L/∂p‖", log=True)
        _draw_bands(right, gates, "mean gate value σ")
        blocks.append(
            _save(
                fig,
                out,
                f"gates-{slug(dataset)}.png",
                f"{dataset}: gate/prompt gradient ratio (left) and mean gate "
                "value (right) over training, mean ± std over seeds per arm",
            )
        )
    accuracy = arm_bands(runs, "accuracy")
    if accuracy:
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        _draw_bands(fig.add_subplot(), accuracy, "HM (base/novel)", markers=True)
        blocks.append(
            _save(fig, out, f"accuracy-{slug(dataset)}.png", f"{dataset}: HM at each evaluation, mean ± std over seeds")
        )
    arms: dict[str, list] = {}
    for run in runs:
        if run.gated:
            arms.setdefault(arm_label(run.keys), []).append(run)
    for label, members in arms.items():
        run = representative(members)
        steps, matrix, names = gate_heatmap(run.path)
        if not matrix.size:
            continue
        fig = Figure(figsize=(8, 1.2 + 0.18 * len(names)), layout="constrained")
        ax = fig.add_subplot()
        extent = (float(steps[0]), float(steps[-1]) if len(steps) > 1 else float(steps[0]) + 1, len(names) - 0.5, -0.5)
        image = ax.imshow(matrix, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="viridis", extent=extent)
        if len(names) <= 24:
            ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_xlabel("step")
        ax.set_title(f"{label}, seed {run.seed}", fontsize="small")
        fig.colorbar(image, ax=ax, label="σ")
        caption = f"{dataset}, {label}: gate values σ × step, seed {run.seed} (median final HM {run.final_hm:.4f})"
        blocks.append(_save(fig, out, f"heatmap-{slug(dataset)}-{slug(label)}.png", caption))
    return blocks


def _draw_bands(ax, bands: dict, ylabel: str, log: bool = False, markers: bool = False) -> None:  # noqa: ANN001
    for label, band in bands.items():
        (line,) = ax.plot(band.x, band.mean, marker="o" if markers else None, ms=3, label=f"{label} (n={band.n})")
        if band.n > 1:
            low = band.mean - band.std
            if log:  # a band reaching zero or below has no place on a log axis: draw its upper half only
                low = np.where(low > 0, low, band.mean)
            ax.fill_between(band.x, low, band.mean + band.std, color=line.get_color(), alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if bands:
        ax.legend(fontsize="x-small")


def _save(fig, out: Path, name: str, caption: str) -> FigureBlock:  # noqa: ANN001
    fig.savefig(out / "figures" / name, dpi=110)
    return FigureBlock(f"figures/{name}", caption)


# ---------------------------------------------------------------------------------------------- writers
def to_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured Markdown."""
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, ListBlock):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, TableBlock):
            lines.append("| " + " | ".join(map(cell, block.headers)) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(map(cell, row)) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{block.caption}]({block.path})", "", f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained HTML page (inline style; figures are the PNG files beside it)."""
    e = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, ListBlock):
            body.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
            rows = "".join("<tr>" + "".join(f"<td{_css(c)}>{e(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            body.append(
                f'<figure><img src="{e(block.path)}" alt="{e(block.caption)}">'
                f"<figcaption>{e(block.caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
        "th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}td.supported{background:#e6f4e6}td.contradicted{background:#fbe3e3}"
        "td.not-tested{background:#f3f3f3}img{max-width:100%}figcaption{font-size:0.85em;color:#555}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _css(text: str) -> str:
    return f' class="{text.replace(" ", "-")}"' if text in STATUS_MARK else ""


def _num(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


def _interval(mean: float, low: float, high: float) -> str:
    return f"{_num(mean, '.4f')} [{_num(low, '.4f')}, {_num(high, '.4f')}]"
