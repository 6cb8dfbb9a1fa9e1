"""The paper's study as one report (``ws report``): comparisons per study axis, the collapse table, figure data,
the paper's claims with their measured status, and provenance. Pure computations; ``workstation.reporting``
renders them.

Data contract:

- a **study** is every recording under one folder (a sweep's output or any folder), read once
  (:func:`load_study`). Its **axes** are the keys that vary across its runs, the seed excepted: ``method``,
  ``variant`` and every ``tags.<name>`` (a sweep's named axes); a tag that splits the runs exactly as another
  axis does is the same axis and is dropped. Runs of different datasets are never compared with each other.
- an **arm** is one combination of every axis value (e.g. ``method=coop-gating, intervention=none``); its runs
  are its seeds.
- a **study table** (:class:`StudyTable`) compares the groups of one axis while the other axes are held fixed,
  for each metric of :data:`METRICS` (final HM, base and novel accuracy as fractions in [0, 1]), each group
  against the axis's baseline (:data:`BASELINE_LABELS`, else the first group), with exactly
  :func:`analyses.stats.compare` — the numbers of ``ws stats PATHS --by AXIS --metric M --baseline B
  --correction holm --json`` for the table's recordings (``StudyTable.paths``).
- the **collapse table** (:class:`CollapseRow`) gives per arm: runs collapsed / adaptive / inconclusive out of n
  (the verdict comes only through :func:`gate_verdicts`), the gate/prompt gradient-norm ratio early and late, gate
  output variance over time and across inputs, and the prompt gradient norms early and late — for an arm without
  gates (a fixed-prompt baseline) only the latter. Values are medians over the arm's runs; per run, the median
  over its gate sets.
- **claims** (:class:`Claim`): each of the paper's claims, per dataset, with its evidence and one of
  :data:`STATUSES` by the rules in ``docs/report.md`` (thresholds: the constants below).

Torch-free.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analyses.diagnostics import RecordingDiagnostics, diagnose
from analyses.figures import run_curve
from analyses.grouping import flat_config
from analyses.stats import ComparisonReport, compare
from recorders.format import STEP, Recording, gate_path, grad_norm_path, iter_recordings, prompt_path
from recorders.format.errors import ConfigError, DataError, RecordingError, WsError

METRICS = ("final_hm", "final_base", "final_novel")
BASELINE_LABELS = ("none", "standard", "coop")  # an axis's baseline group: the first of these it has
NO_INTERVENTION = ("none", "standard")  # axis labels meaning "no intervention / the standard variant"
FIXED_PARENT = {"coop-gating": "coop", "cocoop-gating": "cocoop", "adaptive-bimaple": "bimaple"}
SETTLING_INTERVENTION = "grad-equilibrium"  # the settling experiment equalises prompt and gate gradients
VERDICT_LABELS = ("collapsed", "adaptive", "inconclusive")
STATUSES = ("supported", "contradicted", "not tested")
CORRECTION = "holm"  # the study tables' comparisons against the baseline are a few planned ones
ALPHA = 0.05  # significance level of the Holm-adjusted Welch p
MAJORITY = 0.5  # "most runs": at least this fraction
RATIO_ORDERS_MAX = 1e-2  # "orders of magnitude below": a late gate/prompt ratio at most this (two orders)
CURVE_KINDS = ("ratio", "gates", "accuracy")


# ---------------------------------------------------------------------------------------------- the verdict
def gate_verdicts(diag: RecordingDiagnostics) -> dict[str, str]:
    """The collapse verdict of each gate set of one diagnosed recording (labels from :data:`VERDICT_LABELS`).

    The one place the report reads the verdict: re-point it here when the verdict's implementation changes.
    """
    return {name: g.verdict for name, g in diag.gate_sets.items()}


def run_verdict(per_set: dict[str, str]) -> str | None:
    """One run's verdict from its gate sets': ``adaptive`` when any set adapted, ``collapsed`` when every set
    collapsed, else ``inconclusive``; ``None`` for a run without gates."""
    if not per_set:
        return None
    labels = set(per_set.values())
    if "adaptive" in labels:
        return "adaptive"
    return "collapsed" if labels == {"collapsed"} else "inconclusive"


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class RunInfo:
    """One recording reduced to what the report needs (accuracies in [0, 1]; NaN: not recorded)."""

    path: Path
    status: str
    method: str
    dataset: str
    seed: int
    config: dict[str, Any]
    shots: Any
    ws_version: str
    backbone: str
    backbone_fingerprint: str  # "" when the recording predates the attribute
    final_hm: float
    final_base: float
    final_novel: float
    gate_sets: tuple[str, ...]
    verdicts: dict[str, str]  # per gate set
    verdict: str | None  # the run's (None: no gates)
    early_ratio: float
    late_ratio: float
    var_time: float  # mean over gates of the variance of σ over the run
    var_inputs: float  # late median of the across-input variance of σ (instance gates; NaN otherwise)
    prompt_grad_early: float  # median of the mean per-token prompt gradient norm over the first third
    prompt_grad_late: float
    keys: dict[str, str] = field(default_factory=dict)  # study-axis labels, filled by load_study

    @property
    def gated(self) -> bool:
        return bool(self.gate_sets)


def read_run(path: Path) -> RunInfo:
    """Open and reduce one recording (raises :class:`RecordingError` when it cannot be read)."""
    with Recording.open(path) as rec, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ev = rec.eval_table()
        finals = {}
        for name, column in (("final_hm", "hm"), ("final_base", "base_acc"), ("final_novel", "novel_acc")):
            values = ev[column][np.isfinite(ev[column])]
            finals[name] = float(values[-1]) if len(values) else math.nan
        diag = diagnose(rec) if rec.gate_sets else None
        per_set = gate_verdicts(diag) if diag is not None else {}
        sets = list(diag.gate_sets.values()) if diag is not None else []
        inputs = [
            np.nanmedian(g.value_std_inputs[2 * len(g.steps) // 3 :] ** 2)
            for g in sets
            if g.value_std_inputs is not None
        ]
        early, late = _prompt_grad_phases(rec)
        attrs = rec.attrs
        return RunInfo(
            path=path,
            status=rec.status,
            method=rec.method,
            dataset=rec.dataset or str(rec.config.get("dataset", "")),
            seed=rec.seed,
            config=rec.config,
            shots=rec.config.get("shots", "-"),
            ws_version=str(attrs.get("ws_version", "")),
            backbone=str(rec.config.get("backbone", "")),
            backbone_fingerprint=str(attrs.get("backbone_fingerprint", "")),
            gate_sets=tuple(rec.gate_sets),
            verdicts=per_set,
            verdict=run_verdict(per_set),
            early_ratio=_median([g.phases["early"] for g in sets]),
            late_ratio=_median([g.phases["late"] for g in sets]),
            var_time=_median([float(np.nanmean(g.value_variance_time)) for g in sets]),
            var_inputs=_median(inputs),
            prompt_grad_early=early,
            prompt_grad_late=late,
            final_hm=finals["final_hm"],
            final_base=finals["final_base"],
            final_novel=finals["final_novel"],
        )


def _prompt_grad_phases(rec: Recording, max_points: int = 4096) -> tuple[float, float]:
    """Median over the first and the last third of the rows of the mean per-token prompt gradient norm (every
    prompt set), or, without prompt sets, of the root-sum-square of the ``prompt``-role group gradient norms."""
    n = rec.n_steps
    if n == 0:
        return math.nan, math.nan
    stride = max(1, math.ceil(n / max_points))
    if rec.prompts:
        per_row = np.nanmean(
            np.concatenate([rec.read(prompt_path(p), stride=stride) for p in rec.prompts], axis=1).astype(np.float64),
            axis=1,
        )
    else:
        groups = [g for g, spec in rec.groups.items() if spec.role == "prompt"]
        if not groups:
            return math.nan, math.nan
        stacked = np.stack([rec.read(grad_norm_path(g), stride=stride) for g in groups], axis=1).astype(np.float64)
        per_row = np.sqrt(np.sum(stacked**2, axis=1))
    thirds = np.array_split(per_row, 3)
    return _median(thirds[0]), _median(thirds[2])


# ---------------------------------------------------------------------------------------------- the study
@dataclass
class StudyTable:
    """The groups of ``axis`` compared within one dataset with the other axes held at ``fixed``."""

    dataset: str
    axis: str
    fixed: dict[str, str]
    baseline: str
    paths: list[Path]  # the recordings compared (what `ws stats` is given)
    reports: dict[str, ComparisonReport]  # per metric of METRICS


@dataclass
class CollapseRow:
    """One arm of one dataset (see the module docstring); counts over its complete runs."""

    dataset: str
    arm: dict[str, str]
    n: int
    gated: bool
    collapsed: int
    adaptive: int
    inconclusive: int
    early_ratio: float
    late_ratio: float
    var_time: float
    var_inputs: float
    prompt_grad_early: float
    prompt_grad_late: float

    @property
    def label(self) -> str:
        return arm_label(self.arm)


@dataclass
class Claim:
    """One of the paper's claims on one dataset: its status (one of :data:`STATUSES`) and the evidence."""

    key: str
    statement: str
    dataset: str
    status: str
    evidence: str


@dataclass
class Provenance:
    """Where the numbers come from."""

    directory: Path
    ws_versions: list[str]
    backbones: dict[str, list[str]]  # backbone (config value) → weight fingerprints recorded ("" if not)
    datasets: dict[str, list[str]]  # dataset → shots values
    seeds: list[int]
    command: str


@dataclass
class Study:
    """Everything a report shows, computed from the recordings under ``directory``."""

    directory: Path
    runs: list[RunInfo]  # complete runs, with their axis labels
    axes: list[str]
    tables: list[StudyTable]
    skipped: list[str]  # "dataset, axis (fixed ...): reason" for cells that could not be compared
    collapse: list[CollapseRow]
    claims: list[Claim]
    incomplete: list[str]  # "what: why" for recordings or sweep runs not complete
    provenance: Provenance

    @property
    def datasets(self) -> list[str]:
        return sorted({r.dataset for r in self.runs})


def load_study(directory: str | os.PathLike[str], command: str = "") -> Study:
    """Read every recording under ``directory`` and compute the report (see the module docstring).

    Raises :class:`WsError` (one line) for a missing or empty folder, a folder of unreadable or incomplete
    recordings only, and a study with nothing to compare (one group).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass a sweep folder or any folder of recordings (*.h5)")
    paths = list(iter_recordings([root]))
    if not paths:
        raise RecordingError(f"no recordings (*.h5) under {root}: run `ws batch SPEC` or `ws record` first")
    runs, incomplete = [], []
    for path in paths:
        try:
            run = read_run(path)
        except WsError as exc:
            incomplete.append(f"{path.relative_to(root)}: unreadable ({exc})")
            continue
        if run.status != "complete":
            incomplete.append(f"{path.relative_to(root)}: status {run.status}")
        elif not math.isfinite(run.final_hm):
            incomplete.append(f"{path.relative_to(root)}: no evaluation")
        else:
            runs.append(run)
    incomplete += _manifest_gaps(root, {p.resolve() for p in paths})
    if not runs:
        raise RecordingError(
            f"none of the {len(paths)} recordings under {root} is complete ({incomplete[0]}); "
            "finish or re-run the sweep (`ws batch SPEC` resumes it)"
        )
    axes = study_axes(runs)
    for run in runs:
        run.keys = {axis: _value(run, axis) for axis in axes}
    if not axes:
        raise ConfigError(
            f"the {len(runs)} complete recordings under {root} form one group (no method, variant or tag "
            "differs between them): a report compares groups; add runs of another method or intervention"
        )
    tables, skipped = study_tables(runs, axes)
    if not tables:
        raise ConfigError(
            f"nothing under {root} can be compared: {skipped[0] if skipped else 'one group'}; "
            "a report needs two groups with two or more complete runs each"
        )
    collapse = collapse_rows(runs, axes)
    return Study(
        directory=root,
        runs=runs,
        axes=axes,
        tables=tables,
        skipped=skipped,
        collapse=collapse,
        claims=evaluate_claims(runs, axes),
        incomplete=incomplete,
        provenance=provenance(root, runs, command),
    )


def _manifest_gaps(root: Path, found: set[Path]) -> list[str]:
    """Runs a sweep manifest (``root/manifest.json``) lists whose recording is not on disk (pending, failed before
    writing, ...); recordings on disk speak for themselves (their own status)."""
    path = root / "manifest.json"
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{path.name}: unreadable sweep manifest; runs it lists may be missing"]
    gaps = []
    for entry in entries:
        recording = (root / entry.get("path", "")).resolve() if entry.get("path") else None
        if recording is None or recording not in found:
            gaps.append(f"sweep run {entry.get('id', '?')}: {entry.get('status', '?')}, no recording yet")
    return gaps


def study_axes(runs: Sequence[RunInfo]) -> list[str]:
    """Keys that vary across ``runs`` within some dataset: ``method``, ``variant``, then ``tags.*`` (sorted); a key
    splitting the runs as an earlier one does is left out."""
    candidates = [
        "method",
        "variant",
        *sorted({k for r in runs for k in flat_config(r.config) if k.startswith("tags.")}),
    ]
    axes: list[str] = []
    partitions: list[list[str]] = []
    for key in candidates:
        values = [_value(r, key) for r in runs]
        varies = any(len({v for v, r in zip(values, runs, strict=True) if r.dataset == d}) > 1 for d in _datasets(runs))
        if not varies:
            continue
        partition = _partition(values)
        if partition in partitions:
            continue
        axes.append(key)
        partitions.append(partition)
    return axes


def study_tables(runs: Sequence[RunInfo], axes: Sequence[str]) -> tuple[list[StudyTable], list[str]]:
    """One :class:`StudyTable` per (dataset, axis, values of the other axes) with two or more groups, and the
    reasons cells could not be compared."""
    tables, skipped = [], []
    for dataset in _datasets(runs):
        mine = [r for r in runs if r.dataset == dataset]
        for axis in axes:
            others = [a for a in axes if a != axis]
            cells: dict[tuple[str, ...], list[RunInfo]] = {}
            for run in mine:
                cells.setdefault(tuple(run.keys[a] for a in others), []).append(run)
            for values, members in sorted(cells.items()):
                labels = sorted({r.keys[axis] for r in members}, key=_natural)
                if len(labels) < 2:
                    continue
                fixed = dict(zip(others, values, strict=True))
                baseline = next((b for b in BASELINE_LABELS if b in labels), labels[0])
                paths = sorted(r.path for r in members)
                where = f"{dataset}, {axis}" + (f" ({arm_label(fixed)})" if fixed else "")
                try:
                    reports = {m: compare(paths, axis, m, baseline=baseline, correction=CORRECTION) for m in METRICS}
                except WsError as exc:
                    skipped.append(f"{where}: {exc}")
                    continue
                tables.append(StudyTable(dataset, axis, fixed, baseline, paths, reports))
    return tables, skipped


def collapse_rows(runs: Sequence[RunInfo], axes: Sequence[str]) -> list[CollapseRow]:
    """One :class:`CollapseRow` per (dataset, arm), arms in natural order."""
    arms: dict[tuple[str, tuple[str, ...]], list[RunInfo]] = {}
    for run in runs:
        arms.setdefault((run.dataset, tuple(run.keys[a] for a in axes)), []).append(run)
    rows = []
    for (dataset, values), members in sorted(arms.items(), key=lambda kv: (kv[0][0], [_natural(v) for v in kv[0][1]])):
        gated = [r for r in members if r.gated]
        count = {v: sum(r.verdict == v for r in gated) for v in VERDICT_LABELS}
        rows.append(
            CollapseRow(
                dataset=dataset,
                arm=dict(zip(axes, values, strict=True)),
                n=len(members),
                gated=bool(gated),
                **count,
                early_ratio=_median([r.early_ratio for r in gated]),
                late_ratio=_median([r.late_ratio for r in gated]),
                var_time=_median([r.var_time for r in gated]),
                var_inputs=_median([r.var_inputs for r in gated]),
                prompt_grad_early=_median([r.prompt_grad_early for r in members]),
                prompt_grad_late=_median([r.prompt_grad_late for r in members]),
            )
        )
    return rows


def provenance(root: Path, runs: Sequence[RunInfo], command: str) -> Provenance:
    backbones: dict[str, set[str]] = {}
    datasets: dict[str, set[str]] = {}
    for r in runs:
        backbones.setdefault(r.backbone or "-", set()).add(r.backbone_fingerprint)
        datasets.setdefault(r.dataset, set()).add(str(r.shots))
    return Provenance(
        directory=root,
        ws_versions=sorted({r.ws_version or "-" for r in runs}),
        backbones={b: sorted(f) for b, f in sorted(backbones.items())},
        datasets={d: sorted(s) for d, s in sorted(datasets.items())},
        seeds=sorted({r.seed for r in runs}),
        command=command,
    )


# ---------------------------------------------------------------------------------------------- figure data
@dataclass
class Band:
    """One arm's curve: mean and sample std over its ``n`` seeds at steps ``x`` (all ``(k,)``; std NaN if n = 1)."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int


def arm_bands(runs: Sequence[RunInfo], kind: str, max_points: int = 512) -> dict[str, Band]:
    """Per arm of ``runs`` (label → :class:`Band`) the seed band of ``kind`` (:data:`CURVE_KINDS`); each run's
    curve (:func:`analyses.figures.run_curve`, the gate kinds on its first gate set) interpolated onto the first
    run's steps. Arms whose runs have no such data are left out."""
    if kind not in CURVE_KINDS:
        raise ConfigError(f"unknown curve kind {kind!r}; use one of {', '.join(CURVE_KINDS)}")
    arms: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run in runs:
        with Recording.open(run.path) as rec, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x, y = run_curve(rec, kind, max_points)
        if len(x):
            arms.setdefault(arm_label(run.keys), []).append((x, y))
    out = {}
    for label in sorted(arms, key=_natural):
        series = arms[label]
        x = series[0][0]
        ys = np.stack([np.interp(x, s, v) for s, v in series])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            std = np.nanstd(ys, axis=0, ddof=1) if len(series) > 1 else np.full(len(x), math.nan)
            out[label] = Band(x, np.nanmean(ys, axis=0), std, len(series))
    return out


def representative(runs: Sequence[RunInfo]) -> RunInfo:
    """The run whose final HM is the median of ``runs`` (the lower middle for an even count; ties by seed)."""
    ordered = sorted(runs, key=lambda r: (r.final_hm, r.seed))
    return ordered[(len(ordered) - 1) // 2]


def gate_heatmap(path: Path, max_points: int = 400) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(steps (k,), σ (n_gates, k), row labels)`` of a recording's gates, every gate set stacked, at most
    ``max_points`` strided rows (instance gates: the batch mean)."""
    with Recording.open(path) as rec:
        stride = max(1, math.ceil(rec.n_steps / max_points))
        steps = rec.read(STEP, stride=stride).astype(np.float64)
        blocks, labels = [], []
        for name, spec in rec.gate_sets.items():
            blocks.append(rec.read(gate_path(name, "value"), stride=stride).astype(np.float64).T)
            labels += [f"{name}[{i}]" for i in range(spec.n_gates)]
    matrix = np.concatenate(blocks) if blocks else np.empty((0, len(steps)))
    return steps, matrix, labels


# ---------------------------------------------------------------------------------------------- claims
CLAIMS = {
    "near-constant": "Gates stay near-constant: they collapse instead of adapting to the input.",
    "gradient-gap": "Gate gradients are orders of magnitude below prompt gradients.",
    "no-gain": "Adaptive (gated) prompts do not outperform the fixed prompts they extend.",
    "no-rescue": "Gradient-balancing and revival interventions do not rescue the gates.",
    "settling": "With prompt and gate gradients equalised, gates still neither keep input-dependent variation "
    "nor outperform fixed prompts (the settling experiment).",
}


def evaluate_claims(runs: Sequence[RunInfo], axes: Sequence[str]) -> list[Claim]:
    """Every claim of :data:`CLAIMS` on every dataset, by the rules of ``docs/report.md``."""
    out = []
    for dataset in _datasets(runs):
        mine = [r for r in runs if r.dataset == dataset]
        plain = [r for r in mine if _no_intervention(r, axes)]
        for key, rule in (
            ("near-constant", _claim_near_constant),
            ("gradient-gap", _claim_gradient_gap),
            ("no-gain", _claim_no_gain),
            ("no-rescue", _claim_no_rescue),
            ("settling", _claim_settling),
        ):
            status, evidence = rule(mine, plain, axes)
            out.append(Claim(key, CLAIMS[key], dataset, status, evidence))
    return out


def _claim_near_constant(_all: Sequence[RunInfo], plain: Sequence[RunInfo], _axes: Sequence[str]) -> tuple[str, str]:
    gated = [r for r in plain if r.gated]
    if not gated:
        return "not tested", "no gated run without an intervention"
    n = len(gated)
    c, a = sum(r.verdict == "collapsed" for r in gated), sum(r.verdict == "adaptive" for r in gated)
    evidence = f"{c} collapsed, {a} adaptive, {n - c - a} inconclusive of {n} gated runs without an intervention"
    if c >= MAJORITY * n and c > a:
        return "supported", evidence
    if a >= MAJORITY * n and a > c:
        return "contradicted", evidence
    return "not tested", evidence + " (no majority either way)"


def _claim_gradient_gap(_all: Sequence[RunInfo], plain: Sequence[RunInfo], _axes: Sequence[str]) -> tuple[str, str]:
    ratios = [r.late_ratio for r in plain if r.gated and math.isfinite(r.late_ratio)]
    if not ratios:
        return "not tested", "no gate/prompt gradient ratio recorded in a gated run without an intervention"
    med = float(np.median(ratios))
    evidence = (
        f"median late gate/prompt gradient-norm ratio {med:.3g} over {len(ratios)} gated runs without an "
        f"intervention (range {min(ratios):.3g}–{max(ratios):.3g})"
    )
    return ("supported" if med <= RATIO_ORDERS_MAX else "contradicted"), evidence


def _parent_comparisons(
    runs: Sequence[RunInfo], gated_filter: Any, axes: Sequence[str]
) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """Each gated method (runs passing ``gated_filter``) against its fixed parent without intervention: a list of
    ``(method, parent, ComparisonRow)`` and the pairs that could not be tested."""
    pairs, untested = [], []
    for method, parent in FIXED_PARENT.items():
        gated = [r for r in runs if r.method == method and gated_filter(r)]
        fixed = [r for r in runs if r.method == parent and _no_intervention(r, axes)]
        if not gated or not fixed:
            continue
        if len(gated) < 2 or len(fixed) < 2:
            untested.append(f"{method} vs {parent}: {len(gated)} vs {len(fixed)} runs (two each needed)")
            continue
        rep = compare([r.path for r in gated + fixed], "method", "final_hm", baseline=parent, correction="none")
        pairs.append((method, parent, rep.rows[0]))
    return pairs, untested


def _holm_significant(pairs: list[tuple[str, str, Any]]) -> list[bool]:
    from analyses.stats import adjust_pvalues

    adjusted = adjust_pvalues([row.welch_p for _, _, row in pairs], "holm")
    return [bool(p < ALPHA) for p in adjusted]


def _claim_no_gain(all_runs: Sequence[RunInfo], _plain: Sequence[RunInfo], axes: Sequence[str]) -> tuple[str, str]:
    pairs, untested = _parent_comparisons(all_runs, lambda r: _no_intervention(r, axes), axes)
    if not pairs:
        return "not tested", "; ".join(untested) or "no gated method recorded beside its fixed parent"
    significant = _holm_significant(pairs)
    parts = [
        f"{m} − {p}: HM {row.mean_diff:+.4f} (Welch p {row.welch_p:.3g}, P(improve) {row.prob_improvement:.2f}, "
        f"n {row.n_a} vs {row.n_b})"
        for m, p, row in pairs
    ]
    evidence = "; ".join(parts + untested) + " [Holm over the pairs, α = 0.05]"
    better = any(s and row.mean_diff > 0 for s, (_, _, row) in zip(significant, pairs, strict=True))
    return ("contradicted" if better else "supported"), evidence


def _claim_no_rescue(all_runs: Sequence[RunInfo], _plain: Sequence[RunInfo], axes: Sequence[str]) -> tuple[str, str]:
    arms: dict[tuple[str, str], list[RunInfo]] = {}
    for r in all_runs:
        label = _intervention(r, axes)
        if r.gated and label is not None:
            arms.setdefault((r.method, label), []).append(r)
    if not arms:
        return "not tested", "no gated run with an intervention"
    parts, rescued = [], False
    for (method, label), members in sorted(arms.items()):
        a = sum(r.verdict == "adaptive" for r in members)
        parts.append(f"{method} + {label}: {a} of {len(members)} adaptive")
        rescued |= a >= MAJORITY * len(members) and a > sum(r.verdict == "collapsed" for r in members)
    return ("contradicted" if rescued else "supported"), "; ".join(parts)


def _claim_settling(all_runs: Sequence[RunInfo], _plain: Sequence[RunInfo], axes: Sequence[str]) -> tuple[str, str]:
    equalised = lambda r: _intervention(r, axes) == SETTLING_INTERVENTION  # noqa: E731
    tested = [r for r in all_runs if r.gated and equalised(r)]
    if not tested:
        return "not tested", f"no gated run with the {SETTLING_INTERVENTION} intervention"
    pairs, untested = _parent_comparisons(all_runs, equalised, axes)
    if not pairs:
        return "not tested", "; ".join(untested) or "no fixed-prompt parent recorded beside the equalised runs"
    significant = _holm_significant(pairs)
    parts, settled = [], False
    for s, (method, parent, row) in zip(significant, pairs, strict=True):
        members = [r for r in tested if r.method == method]
        a = sum(r.verdict == "adaptive" for r in members)
        adaptive = a >= MAJORITY * len(members) and a > sum(r.verdict == "collapsed" for r in members)
        better = s and row.mean_diff > 0
        parts.append(
            f"{method} + {SETTLING_INTERVENTION}: {a} of {len(members)} adaptive; HM − {parent} "
            f"{row.mean_diff:+.4f} (Welch p {row.welch_p:.3g}{', significant' if better else ''})"
        )
        settled |= adaptive and better
    evidence = "; ".join(parts + untested) + " [Holm over the pairs, α = 0.05]"
    return ("contradicted" if settled else "supported"), evidence


def _off_baseline(run: RunInfo, axes: Sequence[str]) -> dict[str, str]:
    """The run's labels on the axes other than the method (and a dataset tag) that are not a no-intervention
    label (:data:`NO_INTERVENTION`): empty for a run without intervention and of the standard variant."""
    skip = ("method", "tags.method", "tags.data", "tags.dataset")
    labels = {a: run.keys.get(a, "-") for a in axes if a not in skip}
    return {a: v for a, v in labels.items() if v not in NO_INTERVENTION and v != "-"}


def _intervention(run: RunInfo, axes: Sequence[str]) -> str | None:
    """The run's intervention label (not its variant), or ``None`` when it has none or also differs in another way."""
    off = _off_baseline(run, axes)
    labels = [v for a, v in off.items() if a != "variant"]
    return labels[0] if len(labels) == 1 and len(off) == 1 else None


def _no_intervention(run: RunInfo, axes: Sequence[str]) -> bool:
    return not _off_baseline(run, axes)


# ---------------------------------------------------------------------------------------------- helpers
def arm_label(arm: dict[str, str]) -> str:
    """``"method=coop-gating, intervention=none"`` (``tags.`` dropped from the keys)."""
    return ", ".join(f"{k.removeprefix('tags.')}={v}" for k, v in arm.items()) or "all"


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "all"


def _value(run: RunInfo, key: str) -> str:
    if key == "method":
        return run.method
    value = flat_config(run.config).get(key, "-")
    return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)


def _datasets(runs: Iterable[RunInfo]) -> list[str]:
    return sorted({r.dataset for r in runs})


def _partition(values: Sequence[str]) -> list[str]:
    """Canonical form of the partition ``values`` induce (labels renamed by first appearance)."""
    names: dict[str, str] = {}
    return [names.setdefault(v, str(len(names))) for v in values]


def _natural(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _median(values: Iterable[float]) -> float:
    a = np.asarray([v for v in values if v is not None], np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if len(a) else math.nan
