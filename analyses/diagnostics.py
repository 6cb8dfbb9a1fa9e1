"""Collapse diagnostics of one recording: per gate set, the evidence that the gates adapted or collapsed.

Definitions (all on the recorded rows, read with a stride so that at most ``max_points`` rows are used):

- **ratio** at a step: mean over gates of |∂L/∂g_i| divided by the mean per-token prompt gradient norm
  ‖∂L/∂p_j‖ of the prompt set the gates scale (``gates/<name>`` attribute ``prompt``). Without a linked
  prompt set the denominator is the mean per-token norm over every recorded prompt set; without any, the
  root-sum-square of the ``prompt``-role group gradient norms. ``ratio_source`` says which was used; NaN
  where nothing is recorded.
- **phases**: the median ratio over the first, middle and last third of the rows (``early``, ``middle``,
  ``late``).
- **saturated fraction**: fraction of gates with σ < ``saturation_low`` or σ > ``saturation_high`` at each
  row.
- **L_eff** = Σ_i σ(g_i) at each row.
- **distance from init**: mean over gates of |g_i − g_i(0)| in logit units, g(0) = the ``init_logit``
  attribute (instance gates, which have none: the first recorded batch-mean logit).
- **decay-only counterfactual** (:func:`analyses.mechanism.decay_only_factor`; static gates' logits, instance
  gates' bias where recorded, NaN otherwise): replaying ``torch.optim.SGD`` with a zero gradient, the
  group's ``lr_scale``, ``momentum``, ``dampening``, ``nesterov``, ``weight_decay`` and the recorded
  ``steps/lr`` over the updates between the first and the last row moves g(0) to f·g(0).
  ``decay_displacement`` = (f − 1)·g(0), ``grad_displacement`` = observed displacement − decay_displacement
  (the gradient's part, including its interaction with decay).
- **onset** (:class:`CollapseThresholds`): a row t is *quiet* when, over the forward window of
  ``window_steps`` steps starting at t, the median ratio is below ``ratio_max`` and every gate value's range
  (max − min of σ) is below ``value_change_max`` (without a ratio, only the value condition). The onset is
  the first row from which every row to the end of the run is quiet, provided that quiet stretch spans at
  least one window. On a recording whose gates freeze at step s the onset is found within ``window_steps``
  steps of s (tested).
- **verdict**: ``collapsed`` when there is an onset (and, for instance gates, the late median of the
  across-input standard deviation of σ is below ``instance_std_min``); ``adaptive`` when there is no onset,
  the late ratio is at least ``ratio_max`` (or unmeasured), some gate's gradient-caused displacement is at
  least ``displacement_min`` logits and (instance gates) the late across-input std is at least
  ``instance_std_min``; ``inconclusive`` otherwise. ``reasons`` holds the numbers that decided it.

Torch-free; reads only the series it uses.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from analyses.mechanism import decay_only_factor
from recorders.format import (
    LR,
    STEP,
    GateSetSpec,
    Recording,
    gate_path,
    grad_norm_path,
    loss_path,
    prompt_path,
)

VERDICTS = ("collapsed", "adaptive", "inconclusive")
SERIES = ("steps", "ratio", "saturated_fraction", "l_eff", "distance_from_init", "value_std_inputs")
PHASES = ("early", "middle", "late")


@dataclass(frozen=True)
class CollapseThresholds:
    """Parameters of the onset and verdict rules (see the module docstring)."""

    ratio_max: float = 1e-2  # gate/prompt gradient-norm ratio below this counts as vanished
    value_change_max: float = 1e-3  # a gate value (σ) moving less than this within a window counts as frozen
    window_steps: int = 100  # window of the onset rule, in optimiser steps
    displacement_min: float = 0.1  # gradient-caused logit displacement that counts as having moved
    instance_std_min: float = 1e-3  # across-input std of σ below this: instance gates gave up on the input
    saturation_low: float = 0.05  # σ below this is saturated (off)
    saturation_high: float = 0.95  # σ above this is saturated (on)

    def __post_init__(self) -> None:
        if self.window_steps < 1 or not 0 <= self.saturation_low < self.saturation_high <= 1:
            raise ValueError("window_steps must be >= 1 and 0 <= saturation_low < saturation_high <= 1")


@dataclass
class GateSetDiagnostics:
    """Diagnostics of one gate set; series are over the ``k`` strided rows at ``steps``."""

    name: str
    kind: str
    verdict: str  # one of VERDICTS
    reasons: dict[str, float]  # the numbers that decided the verdict
    onset_step: int | None  # step of collapse onset, None when there is none
    steps: np.ndarray  # (k,) int64 steps of the series
    ratio: np.ndarray  # (k,) gate/prompt gradient-norm ratio (NaN where unmeasured)
    ratio_source: str  # "prompt:<name>", "prompts", "groups" or "none"
    phases: dict[str, float]  # median ratio in the early/middle/late third
    saturated_fraction: np.ndarray  # (k,) fraction of gates with σ outside [low, high]
    l_eff: np.ndarray  # (k,) Σσ
    distance_from_init: np.ndarray  # (k,) mean |g − g(0)| in logits
    value_variance_time: np.ndarray  # (n_gates,) variance of σ over the strided rows
    value_std_inputs: np.ndarray | None  # (k,) mean over gates of the across-input std of σ (instance gates)
    displacement: np.ndarray  # (n_gates,) g(last row) − g(0)
    decay_displacement: np.ndarray  # (n_gates,) what weight decay alone would have done (NaN: unknown)
    grad_displacement: np.ndarray  # (n_gates,) displacement − decay_displacement

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        """JSON-ready summary with the final value of each series; ``series`` adds the per-row lists."""
        out = {k: _plain(getattr(self, k)) for k in self.__dataclass_fields__ if series or k not in SERIES}
        if len(self.steps):
            finals = {k: getattr(self, k) for k in SERIES[1:]}
            out["final"] = {k: _plain(v[-1]) for k, v in finals.items() if v is not None}
        return out


@dataclass
class RecordingDiagnostics:
    """Diagnostics of one recording: per gate set, plus non-gate facts every recording has."""

    path: Path
    status: str
    method: str
    dataset: str
    seed: int
    n_steps: int
    stride: int  # row stride of the series (1 = every row)
    gate_sets: dict[str, GateSetDiagnostics]
    final_eval: dict[str, Any] | None  # last evaluation: step, base_acc, novel_acc, hm
    best_eval: dict[str, Any] | None  # evaluation with the highest hm
    final_loss: float  # total loss at the last row (NaN if none)
    nonfinite_events: int  # events of kind "nonfinite"
    group_grad_late: dict[str, float]  # median gradient norm per group over the late third
    thresholds: CollapseThresholds = field(default_factory=CollapseThresholds)

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        """JSON-ready dict (``series``: include the per-row arrays of each gate set)."""
        skip = ("gate_sets", "thresholds")
        out = {k: _plain(getattr(self, k)) for k in self.__dataclass_fields__ if k not in skip}
        out["thresholds"] = asdict(self.thresholds)
        out["gate_sets"] = {name: g.to_dict(series) for name, g in self.gate_sets.items()}
        return out


def diagnose(
    rec: Recording, thresholds: CollapseThresholds | None = None, max_points: int = 4096
) -> RecordingDiagnostics:
    """Diagnose every gate set of ``rec`` from at most ``max_points`` strided rows of each series it needs."""
    th = thresholds or CollapseThresholds()
    n = rec.n_steps
    stride = max(1, math.ceil(n / max_points))
    steps = rec.read(STEP, stride=stride)
    lr = rec.read(LR) if rec.gate_sets else np.empty(0)
    with warnings.catch_warnings():  # missing rows (NaN) are expected: an all-NaN reduction is NaN, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        gate_sets = {name: _diagnose_gates(rec, spec, steps, stride, lr, th) for name, spec in rec.gate_sets.items()}
    ev = rec.eval_table()
    final_eval = best_eval = None
    if len(ev["step"]):
        final_eval = _eval_row(ev, -1)
        hm = ev["hm"]
        best_eval = _eval_row(ev, int(np.nanargmax(hm))) if np.isfinite(hm).any() else final_eval
    total = loss_path("total")
    final_loss = float(rec.row(total, -1)) if n and rec.has(total) else math.nan
    late = slice(2 * n // 3, n)
    group_grad_late = {g: _nanmedian(rec.read(grad_norm_path(g), late.start, late.stop, stride)) for g in rec.groups}
    return RecordingDiagnostics(
        path=rec.path,
        status=rec.status,
        method=rec.method,
        dataset=rec.dataset,
        seed=rec.seed,
        n_steps=n,
        stride=stride,
        gate_sets=gate_sets,
        final_eval=final_eval,
        best_eval=best_eval,
        final_loss=final_loss,
        nonfinite_events=sum(e.kind == "nonfinite" for e in rec.events()),
        group_grad_late=group_grad_late,
        thresholds=th,
    )


def _ratio_denominator(rec: Recording, prompt: str, stride: int) -> tuple[str, np.ndarray | None]:
    """Per-row denominator of the ratio and its source (see the module docstring)."""
    if prompt in rec.prompts:
        return f"prompt:{prompt}", _nanmean_rows(rec.read(prompt_path(prompt), stride=stride))
    if rec.prompts:
        norms = [rec.read(prompt_path(p), stride=stride) for p in rec.prompts]
        return "prompts", _nanmean_rows(np.concatenate(norms, axis=1))
    groups = [g for g, spec in rec.groups.items() if spec.role == "prompt"]
    if groups:
        stacked = np.stack([rec.read(grad_norm_path(g), stride=stride) for g in groups], axis=1)
        return "groups", np.sqrt(np.sum(stacked.astype(np.float64) ** 2, axis=1))
    return "none", None


def _diagnose_gates(
    rec: Recording, spec: GateSetSpec, steps: np.ndarray, stride: int, lr: np.ndarray, th: CollapseThresholds
) -> GateSetDiagnostics:
    read = lambda series: rec.read(gate_path(spec.name, series), stride=stride).astype(np.float64)  # noqa: E731
    grad, value, logit = read("grad"), read("value"), read("logit")
    k = len(steps)
    source, denominator = _ratio_denominator(rec, spec.prompt, stride)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = _nanmean_rows(np.abs(grad)) / denominator if denominator is not None else np.full(k, np.nan)
    thirds = np.array_split(np.arange(k), 3)
    phases = {ph: _nanmedian(ratio[idx]) for ph, idx in zip(PHASES, thirds, strict=True)}

    instance = spec.kind == "instance"
    first = rec.row(gate_path(spec.name, "logit"), 0).astype(np.float64) if k else np.zeros(spec.n_gates)
    init = np.asarray(spec.init_logit, np.float64) if len(spec.init_logit) == spec.n_gates else first
    last = rec.row(gate_path(spec.name, "logit"), -1).astype(np.float64) if k else init
    displacement = last - init
    group = rec.groups.get(spec.group)
    if group is None:
        decay = np.full(spec.n_gates, math.nan)
    else:  # instance gates: the bias's decay-only displacement, NaN where the bias was not recorded
        f = decay_only_factor(lr[: max(rec.n_steps - 1, 0)], group)
        start = np.asarray(spec.init_bias if instance else init, np.float64)
        decay = (f - 1.0) * start if len(start) == spec.n_gates else np.full(spec.n_gates, math.nan)
    grad_disp = displacement - np.nan_to_num(decay)
    std_inputs = _nanmean_rows(read("value_std")) if instance else None

    spacing = float(np.median(np.diff(steps))) if k > 1 else 1.0
    window = max(1, math.ceil(th.window_steps / max(spacing, 1.0)))
    onset_row = _onset_row(ratio, value, window, th)
    late = thirds[2]
    reasons = {
        "late_ratio": phases["late"],
        "late_value_range": float(np.ptp(value[late], axis=0).max()) if len(late) else math.nan,
        "max_grad_displacement": float(np.nanmax(np.abs(grad_disp))) if k else math.nan,
        "max_decay_displacement": float(np.nanmax(np.abs(decay))) if not np.isnan(decay).all() else math.nan,
        "quiet_from_fraction": (onset_row / k) if onset_row is not None else math.nan,
    }
    if std_inputs is not None:
        reasons["late_input_std"] = _nanmedian(std_inputs[late])
    verdict = _verdict(onset_row is not None, reasons, instance, th)
    low, high = th.saturation_low, th.saturation_high
    return GateSetDiagnostics(
        name=spec.name,
        kind=spec.kind,
        verdict=verdict,
        reasons=reasons,
        onset_step=int(steps[onset_row]) if onset_row is not None else None,
        steps=steps,
        ratio=ratio,
        ratio_source=source,
        phases=phases,
        saturated_fraction=((value < low) | (value > high)).mean(axis=1),
        l_eff=value.sum(axis=1),
        distance_from_init=np.abs(logit - init).mean(axis=1),
        value_variance_time=value.var(axis=0) if k else np.full(spec.n_gates, math.nan),
        value_std_inputs=std_inputs,
        displacement=displacement,
        decay_displacement=decay,
        grad_displacement=grad_disp,
    )


def _onset_row(ratio: np.ndarray, value: np.ndarray, window: int, th: CollapseThresholds) -> int | None:
    """First row from which every row to the end is quiet (see the module docstring), or None."""
    k = len(ratio)
    if k < window:
        return None
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], window - 1, axis=0)])  # noqa: E731
    values = sliding_window_view(pad(value), window, axis=0)  # (k, n_gates, window)
    quiet = np.ptp(values, axis=-1).max(axis=1) < th.value_change_max
    if np.isfinite(ratio).any():
        with np.errstate(all="ignore"):
            med = np.nanmedian(sliding_window_view(pad(ratio), window), axis=-1)
        quiet &= med < th.ratio_max
    loud = np.flatnonzero(~quiet)
    start = int(loud[-1]) + 1 if len(loud) else 0
    return start if k - start >= window else None


def _verdict(onset: bool, reasons: dict[str, float], instance: bool, th: CollapseThresholds) -> str:
    input_ok = reasons.get("late_input_std", math.inf)
    if onset and (not instance or input_ok < th.instance_std_min):
        return "collapsed"
    ratio_ok = not reasons["late_ratio"] < th.ratio_max  # NaN (unmeasured) does not block adaptive
    moved = reasons["max_grad_displacement"] >= th.displacement_min
    if not onset and ratio_ok and moved and input_ok >= th.instance_std_min:
        return "adaptive"
    return "inconclusive"


def _eval_row(ev: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    return {"step": int(ev["step"][i]), **{k: float(ev[k][i]) for k in ("base_acc", "novel_acc", "hm")}}


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    with np.errstate(all="ignore"):
        return np.full(len(a), np.nan) if a.shape[1] == 0 else np.nanmean(a, axis=1)


def _nanmedian(a: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    return float(np.nanmedian(a)) if np.isfinite(a).any() else math.nan


def _plain(v: Any) -> Any:
    """numpy → JSON-ready Python (NaN → None)."""
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
