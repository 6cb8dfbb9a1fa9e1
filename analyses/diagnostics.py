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
- **verdict** and **onset**: :func:`analyses.verdict.judge` — functional evidence from the counterfactual
  evaluations and scale-free dynamics (gradient-driven movement in σ, sign consistency of ∂L/∂g, instance spread
  over the test images); ``evidence`` holds every criterion, ``reasons`` their numbers. The ratio, phases and
  displacements above describe the run; the verdict does not threshold them.
- **best evaluation**: the test scores at the evaluation with the highest validation accuracy (the validation split
  holds base classes only, so it is base accuracy; ties go to the later evaluation); None when no validation was
  recorded (schema 1.0).

Torch-free; reads only the series it uses.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analyses.mechanism import decay_only_factor
from analyses.verdict import VERDICTS as VERDICTS
from analyses.verdict import Verdict, VerdictThresholds, counterfactual_evidence, judge_with
from recorders.format import (
    LR,
    SATURATED_ABOVE,
    SATURATED_BELOW,
    STEP,
    GateSetSpec,
    Recording,
    gate_path,
    grad_norm_path,
    loss_path,
    prompt_path,
)

SERIES = ("steps", "ratio", "saturated_fraction", "l_eff", "distance_from_init", "value_std_inputs")
PHASES = ("early", "middle", "late")


@dataclass(frozen=True)
class CollapseThresholds:
    """Saturation bounds of the descriptive series, and the verdict's thresholds (:class:`VerdictThresholds`)."""

    saturation_low: float = SATURATED_BELOW  # σ below this is saturated (off)
    saturation_high: float = SATURATED_ABOVE  # σ above this is saturated (on)
    verdict: VerdictThresholds = field(default_factory=VerdictThresholds)

    def __post_init__(self) -> None:
        if not 0 <= self.saturation_low < self.saturation_high <= 1:
            raise ValueError("0 <= saturation_low < saturation_high <= 1 is required")


@dataclass
class GateSetDiagnostics:
    """Diagnostics of one gate set; series are over the ``k`` strided rows at ``steps``."""

    name: str
    kind: str
    verdict: str  # one of VERDICTS
    reasons: dict[str, float]  # the numbers of every criterion of the verdict (NaN: not measured)
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
    evidence: Verdict | None = None  # the criteria of the verdict, one line each

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        """JSON-ready summary with the final value of each series; ``series`` adds the per-row lists."""
        fields = [k for k in self.__dataclass_fields__ if (series or k not in SERIES) and k != "evidence"]
        out = {k: _plain(getattr(self, k)) for k in fields}
        out["evidence"] = _plain(self.evidence.to_dict()) if self.evidence is not None else None
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
    best_eval: dict[str, Any] | None  # test scores at the highest validation accuracy (None: no validation)
    final_loss: float  # total loss at the last row (NaN if none)
    nonfinite_events: int  # events of kind "nonfinite"
    group_grad_late: dict[str, float]  # median gradient norm per group over the late third
    thresholds: CollapseThresholds = field(default_factory=CollapseThresholds)

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        """JSON-ready dict (``series``: include the per-row arrays of each gate set)."""
        skip = ("gate_sets", "thresholds")
        out = {k: _plain(getattr(self, k)) for k in self.__dataclass_fields__ if k not in skip}
        out["thresholds"] = _plain(asdict(self.thresholds))
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
    cfs = counterfactual_evidence(rec, th.verdict) if rec.gate_sets else {}
    with warnings.catch_warnings():  # missing rows (NaN) are expected: an all-NaN reduction is NaN, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        gate_sets = {
            name: _diagnose_gates(rec, spec, steps, stride, lr, th, cfs) for name, spec in rec.gate_sets.items()
        }
    ev = rec.eval_table()
    final_eval = best_eval = None
    if len(ev["step"]):
        final_eval = _eval_row(ev, -1)
        val = rec.validation_acc()
        if np.isfinite(val).any():
            best = int(np.flatnonzero(val == np.nanmax(val))[-1])  # ties: the later, longer-trained evaluation
            best_eval = _eval_row(ev, best) | {"val_acc": float(val[best])}
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
    rec: Recording,
    spec: GateSetSpec,
    steps: np.ndarray,
    stride: int,
    lr: np.ndarray,
    th: CollapseThresholds,
    cfs: dict[str, Any],
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

    evidence = judge_with(rec, spec, cfs, th.verdict)
    reasons = {k: float(v) for c in evidence.criteria for k, v in c.values.items()}
    reasons["max_grad_displacement"] = float(np.nanmax(np.abs(grad_disp))) if k else math.nan
    if std_inputs is not None:
        reasons["late_input_std"] = _nanmedian(std_inputs[thirds[2]])
    low, high = th.saturation_low, th.saturation_high
    return GateSetDiagnostics(
        name=spec.name,
        kind=spec.kind,
        verdict=evidence.verdict,
        reasons=reasons,
        onset_step=evidence.onset_step,
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
        evidence=evidence,
    )


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
