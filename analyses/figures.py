"""Figures for papers (``ws plot``): one curve per group of runs, seeds drawn as the mean and a ±1 std band.

Kinds (x axis: optimiser step):

- ``gates``: mean gate value σ over the gates of one gate set;
- ``ratio``: gate/prompt gradient-norm ratio (as :mod:`analyses.diagnostics` defines it), log scale;
- ``variance``: gate output variance: across inputs (std² of σ, instance gates) or, for static gates, over time
  (variance of σ within a trailing window of :data:`VARIANCE_WINDOW` steps, mean over gates);
- ``accuracy``: evaluation HM (fractions in [0, 1]);
- ``factors``: the ratio's three factors (1 − σ, ‖u‖, |cos|; geometric mean over the set's gates) and their product,
  log scale (:mod:`analyses.mechanism`);
- ``movement``: cumulative gate movement split into what weight decay alone would have made and the rest (mean |·|
  over gates of the static logits or the instance bias; instance weight rows dotted, as norms).

The gate kinds read the gate set named by ``gate_set`` in every recording (default: each recording's first gate
set); a recording without that set is a :class:`ConfigError`. ``accuracy`` ignores ``gate_set``.

Each run's curve is read with a stride (at most ``max_points`` rows), interpolated onto the first run's steps of
its group, and the group's mean and std are drawn. matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analyses.diagnostics import diagnose
from analyses.grouping import Run, group_runs
from recorders.format import Recording, gate_path, iter_recordings
from recorders.format.errors import ConfigError

KINDS = ("gates", "ratio", "variance", "accuracy", "factors", "movement")
MULTI = ("factors", "movement")  # kinds with several curves per group
FORMATS = (".png", ".pdf", ".svg")
_YLABEL = {
    "gates": "mean gate value σ",
    "ratio": "|∂L/∂g| / ‖∂L/∂p‖",
    "variance": "gate output variance",
    "accuracy": "HM (base/novel)",
    "factors": "ratio = (1−σ)·‖u‖·|cos|",
    "movement": "cumulative |Δ| (logit units)",
}
_STYLE = {"1−σ": ":", "‖u‖": "-.", "|cos|": "--", "ratio": "-", "decay": "--", "rest": "-"}

VARIANCE_WINDOW = 100  # steps of the trailing window of the `variance` kind for static gates


def run_curve(
    rec: Recording, kind: str, max_points: int = 2048, gate_set: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one recording for ``kind``, both ``(k,)``; empty when the run has no such data.

    ``gate_set``: the gate set the gate kinds read (None: the recording's first); a name the recording lacks is a
    :class:`ConfigError` naming the sets it has.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown plot kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind in MULTI:
        raise ConfigError(f"--kind {kind} draws several curves; use run_curves")
    if kind == "accuracy":
        ev = rec.eval_table()
        return ev["step"].astype(np.float64), ev["hm"]
    if not _has_gate_set(rec, gate_set):
        return np.empty(0), np.empty(0)
    d = diagnose(rec, max_points=max_points)
    g = d.gate_sets[gate_set or next(iter(rec.gate_sets))]
    if kind == "ratio":
        return g.steps.astype(np.float64), g.ratio
    value = rec.read(gate_path(g.name, "value"), stride=d.stride).astype(np.float64)
    if kind == "gates":
        return g.steps.astype(np.float64), value.mean(axis=1)
    if g.value_std_inputs is not None:
        return g.steps.astype(np.float64), g.value_std_inputs**2
    window = max(2, round(VARIANCE_WINDOW / d.stride))
    padded = np.concatenate([np.repeat(value[:1], window - 1, axis=0), value])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (k, n_gates, window)
    return g.steps.astype(np.float64), windows.var(axis=-1).mean(axis=1)


def _has_gate_set(rec: Recording, gate_set: str | None) -> bool:
    """Whether ``rec`` has gates to draw; a named ``gate_set`` it lacks is a :class:`ConfigError`."""
    if gate_set is not None and gate_set not in rec.gate_sets:
        raise ConfigError(
            f"{rec.path}: no gate set {gate_set!r} (it has {', '.join(rec.gate_sets) or 'none'}); "
            "choose one of those with --gate-set"
        )
    return bool(rec.gate_sets)


def run_curves(
    rec: Recording, kind: str, max_points: int = 2048, gate_set: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Label → ``(steps, values)`` of one recording: for ``factors`` the three factors and the ratio (geometric
    means over gates), for ``movement`` ``decay`` and ``rest`` (mean |·| over gates; instance gates also
    ``weight decay`` and ``weight rest``); the single curve of the other kinds under the label ``""``."""
    if kind not in MULTI:
        return {"": run_curve(rec, kind, max_points, gate_set)}
    from analyses.mechanism import FACTORS, LABELS, gate_factors, gate_movement

    if not _has_gate_set(rec, gate_set):
        return {}
    spec = rec.gate_sets[gate_set or next(iter(rec.gate_sets))]
    stride = max(1, math.ceil(rec.n_steps / max_points))
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if kind == "factors":
            f = gate_factors(rec, spec, stride)
            x = f.steps.astype(np.float64)
            curves = {LABELS[k]: (x, np.exp(np.nanmean(np.log(f.factors[k]), axis=1))) for k in FACTORS}
            curves["ratio"] = (x, np.exp(np.nanmean(np.log(f.ratio), axis=1)))
            return curves
        m = gate_movement(rec, spec, stride)
        x = m.steps.astype(np.float64)
        curves = {}
        for part, mv in m.parts.items():
            prefix = "weight " if part == "weight" else ""
            curves[f"{prefix}decay"] = (x, np.nanmean(np.abs(mv.decay), axis=1))
            curves[f"{prefix}rest"] = (x, np.nanmean(np.abs(mv.rest), axis=1))
        return curves


def plot_runs(
    paths: Sequence[str | os.PathLike[str]],
    kind: str,
    out: str | os.PathLike[str],
    *,
    by: str = "method",
    max_points: int = 2048,
    gate_set: str | None = None,
) -> Path:
    """Draw ``kind`` for the recordings under ``paths`` grouped by ``by`` and save to ``out`` (.png/.pdf/.svg).

    ``gate_set``: the gate set of every recording the gate kinds draw (None: each recording's first).
    """
    from matplotlib.figure import Figure

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"{out}: unsupported figure format; use a name ending in {', '.join(FORMATS)}")
    if kind not in KINDS:
        raise ConfigError(f"unknown plot kind {kind!r}; use one of {', '.join(KINDS)}")
    curves: dict[Path, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    runs = []
    for path in iter_recordings(paths):
        with Recording.open(path) as rec:
            curves[path] = run_curves(rec, kind, max_points, gate_set)
            runs.append(Run(path, rec.status, rec.method, rec.dataset, rec.seed, rec.config, 0.0))
    if not runs:
        raise ConfigError(f"no recordings (*.h5) under {', '.join(map(str, paths))}; check the paths")
    groups, _ = group_runs(runs, by)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for colour, (name, members) in enumerate(groups.items()):
        labels = dict.fromkeys(label for r in members for label in curves[r.path])
        for label in labels:
            series = [curves[r.path][label] for r in members if len(curves[r.path].get(label, ((),))[0])]
            series = [(s, v) for s, v in series if np.isfinite(v).any()]
            if not series:
                continue
            x = series[0][0]
            ys = np.stack([np.interp(x, s, v) for s, v in series])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(ys, axis=0)
                std = np.nanstd(ys, axis=0, ddof=1) if len(series) > 1 else None
            tag = f"{name} · {label}" if label else name
            color = f"C{colour}"
            linestyle = ":" if label.startswith("weight ") else _STYLE.get(label, "-")
            ax.plot(x, mean, label=f"{tag} (n={len(series)})", color=color, linestyle=linestyle)
            if std is not None:
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            drawn += 1
    if not drawn:
        raise ConfigError(
            f"none of the recordings has data for --kind {kind} (no gate sets, no evaluations, or series "
            "this recording predates); choose another kind"
        )
    if kind in ("ratio", "factors"):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(_YLABEL[kind] if gate_set is None or kind == "accuracy" else f"{_YLABEL[kind]} · {gate_set}")
    ax.legend(title=by, fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out
