"""Runs as units of analysis: one value of a metric per recording, grouped by a config key.

A grouping key is a root attribute (``method``, ``dataset``, ``seed``, ``status``) or a config key, dotted
for nesting (``optim.lr``). A metric is one number per run: from the evaluations (``final_hm``,
``best_novel``, ..., accuracies as fractions in [0, 1]; ``best_*`` are the test scores at the evaluation with the
highest validation accuracy, NaN for recordings without validation scores), the last total loss, the counterfactual
HM drops at the last evaluation (``cf_init_drop_hm``, ``cf_mean_drop_hm``, ``cf_open_drop_hm``: trained −
counterfactual, NaN when not recorded), or from the collapse diagnostics (``late_ratio``, ``l_eff``,
``gradient_movement``, ...; see :mod:`analyses.diagnostics` and :mod:`analyses.verdict`), optionally naming the gate
set as ``late_ratio@ctx_gates`` (needed when a recording has several). Eval metrics read only the ``eval/``
datasets; diagnostic metrics read the strided series :func:`~analyses.diagnostics.diagnose` needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyses.diagnostics import GateSetDiagnostics, diagnose
from analyses.verdict import counterfactual_evidence
from recorders.format import COUNTERFACTUALS, Recording, iter_recordings, loss_path
from recorders.format.errors import ConfigError, RecordingError

ATTR_KEYS = ("method", "dataset", "seed", "status")
EVAL_METRICS = {
    f"{when}_{col}": (when, f"{col}_acc" if col != "hm" else "hm")
    for when in ("final", "best")
    for col in ("hm", "base", "novel")
}
DIAGNOSTIC_METRICS: dict[str, Callable[[GateSetDiagnostics], float]] = {
    "early_ratio": lambda g: g.phases["early"],
    "late_ratio": lambda g: g.phases["late"],
    "saturated_fraction": lambda g: float(g.saturated_fraction[-1]),
    "l_eff": lambda g: float(g.l_eff[-1]),
    "distance_from_init": lambda g: float(g.distance_from_init[-1]),
    "grad_displacement": lambda g: float(np.mean(np.abs(g.grad_displacement))),
    "decay_displacement": lambda g: float(np.mean(np.abs(g.decay_displacement))),
    "onset_step": lambda g: math.nan if g.onset_step is None else float(g.onset_step),
    "input_std": lambda g: g.reasons.get("late_input_std", math.nan),
    "gradient_movement": lambda g: g.reasons.get("gradient_movement", math.nan),
    "sign_s2": lambda g: g.reasons.get("sign_s2", math.nan),
    "spread_growth": lambda g: g.reasons.get("spread_growth", math.nan),
}
CF_METRICS = tuple(f"cf_{kind}_drop_hm" for kind in COUNTERFACTUALS)
MISSING = object()  # Run.key of a run without the key


def metric_names() -> list[str]:
    """Every metric :func:`run_metric` knows (diagnostic ones also take an ``@<gate set>`` suffix)."""
    return [*EVAL_METRICS, "final_loss", *CF_METRICS, *DIAGNOSTIC_METRICS]


@dataclass(frozen=True)
class Run:
    """One recording reduced to what a comparison needs; ``value`` is NaN when the run lacks the metric."""

    path: Path
    status: str
    method: str
    dataset: str
    seed: int
    config: dict[str, Any]
    value: float

    def key(self, key: str) -> Any:
        """The run's value of a grouping key, or :data:`MISSING`."""
        if key in ATTR_KEYS:
            return getattr(self, key)
        return flat_config(self.config).get(key, MISSING)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted.key: leaf value}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_metric(metric: str) -> None:
    """Raise :class:`ConfigError` listing the valid metrics when ``metric`` is not one of them."""
    if metric.partition("@")[0] not in metric_names():
        raise ConfigError(
            f"unknown metric {metric!r}; valid metrics: {', '.join(metric_names())} "
            "(diagnostic metrics take @<gate set>, e.g. late_ratio@ctx_gates)"
        )


def run_metric(rec: Recording, metric: str) -> float:
    """The value of ``metric`` for one recording (NaN when it has none, e.g. no evaluation yet)."""
    check_metric(metric)
    name, _, gate = metric.partition("@")
    if name in EVAL_METRICS:
        when, column = EVAL_METRICS[name]
        values = rec.eval_table()[column]
        if when == "best":  # the test score where validation accuracy peaks (ties: the later evaluation)
            val = rec.validation_acc()
            if not np.isfinite(val).any():
                return math.nan
            return float(values[np.flatnonzero(val == np.nanmax(val))[-1]])
        values = values[np.isfinite(values)]
        return float(values[-1]) if len(values) else math.nan
    if name in CF_METRICS:
        cf = counterfactual_evidence(rec).get(name.removeprefix("cf_").removesuffix("_drop_hm"))
        return cf.drop_hm if cf is not None else math.nan
    if name == "final_loss":
        total = loss_path("total")
        return float(rec.row(total, -1)) if rec.n_steps and rec.has(total) else math.nan
    sets = rec.gate_sets
    if gate and gate not in sets:
        raise ConfigError(f"{rec.path}: no gate set {gate!r}; it has {', '.join(sets) or 'none'}")
    if not gate and len(sets) > 1:
        example = f"{name}@{next(iter(sets))}"
        raise ConfigError(f"{rec.path} has gate sets {', '.join(sets)}; name one, e.g. {example}")
    if not sets:
        return math.nan
    return DIAGNOSTIC_METRICS[name](diagnose(rec).gate_sets[gate or next(iter(sets))])


def load_runs(
    paths: Sequence[str | os.PathLike[str]],
    metric: str,
    skip_damaged: Callable[[RecordingError], None] | None = None,
) -> list[Run]:
    """Open each recording under ``paths`` (files or directories, ``*.h5`` recursively) once; reduce it.

    A recording that cannot be opened or whose metric cannot be read raises its
    :class:`~recorders.format.errors.RecordingError`, or, with ``skip_damaged``, is passed to it and left out."""
    check_metric(metric)
    runs, skipped = [], 0
    for path in iter_recordings(paths):
        try:
            with Recording.open(path) as rec:
                run = Run(
                    path=path,
                    status="inconsistent" if rec.status == "complete" and not rec.complete else rec.status,
                    method=rec.method,
                    dataset=rec.dataset,
                    seed=rec.seed,
                    config=rec.config,
                    value=run_metric(rec, metric),
                )
        except RecordingError as exc:
            if skip_damaged is None:
                raise
            skip_damaged(exc)
            skipped += 1
            continue
        runs.append(run)
    if not runs and skipped:
        raise RecordingError(f"all {skipped} recording(s) under {', '.join(map(str, paths))} are damaged")
    if not runs:
        raise RecordingError(f"no recordings (*.h5) under {', '.join(map(str, paths))}; check the paths")
    return runs


def available_keys(runs: Sequence[Run]) -> list[str]:
    """Every grouping key at least one run has: the attributes, then the config keys sorted."""
    keys = {k for run in runs for k in flat_config(run.config)}
    return [*ATTR_KEYS, *sorted(keys - set(ATTR_KEYS))]


def group_runs(runs: Sequence[Run], by: str) -> tuple[dict[str, list[Run]], list[Run]]:
    """Runs grouped by the string form of their ``by`` value (groups in natural order, runs by seed), and the
    runs that lack the key. Raises :class:`ConfigError` listing the keys that exist when no run has ``by``."""
    groups: dict[str, list[Run]] = {}
    missing = []
    for run in runs:
        value = run.key(by)
        if value is MISSING:
            missing.append(run)
        else:
            groups.setdefault(_label(value), []).append(run)
    if not groups:
        keys = ", ".join(available_keys(runs))
        raise ConfigError(f"no recording has the key {by!r}; keys that exist: {keys}")
    ordered = sorted(groups, key=_natural)
    return {g: sorted(groups[g], key=lambda r: (r.seed, str(r.path))) for g in ordered}, missing


def _label(value: Any) -> str:
    return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)


def _natural(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
