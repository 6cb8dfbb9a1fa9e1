"""Why the gate/prompt gradient ratio is small, and what moved the gates: gradient or weight decay.

**Factors.** A gate scales a vector, ũ_i = σ(g_i)·u_i (a context token C_i; C_i + π(x) for CoCoOp-gating, per
input; a layer's length-gated prompts for a depth gate). With G_i = ∂L/∂ũ_i, ∂L/∂g_i = σ'(g_i)·⟨G_i, u_i⟩ and
∂L/∂u_i = σ(g_i)·G_i along that path, so exactly

    ratio_i = |∂L/∂g_i| / ‖∂L/∂u_i‖ = (1 − σ(g_i)) · ‖u_i‖ · |cos(G_i, u_i)|.

The recording holds the three factors (``factor_sigma``, ``factor_norm``, ``factor_cos``; for instance gates
the geometric mean over the batch of each, so the product is the geometric mean of the per-input ratio). Here,
per gate set and step: the factors, their product, and each loss term's share of the gate gradient (``grad_task``,
the part through ũ, and ``grad_<term>`` for terms acting on the gate values directly; shares of
|part| / Σ|parts|, before any equilibrium rescale).

**Which factor holds the ratio down.** log10 ratio = log10(1 − σ) + log10‖u‖ + log10|cos| holds for the geometric
mean over gates and rows of a phase (the first, middle and last third of the rows), so each phase's log ratio is
split exactly into three log-factors. References for an uninformed gate: 1 − σ = 0.5 (an undecided gate), ‖u‖ at
the first recorded row, |cos| = √(2/(πD)) (the mean |cos| between a fixed vector and a random direction in D
dimensions, D the length of u). The dominant factor is the smallest one (the largest negative log10 term).

**Movement.** SGD with only weight decay (zero gradient; the group's ``lr_scale``, ``momentum``, ``dampening``,
``nesterov``, ``weight_decay`` and the recorded ``steps/lr``) is linear in the parameter: after t updates it takes
p(0) to f_t·p(0). Per row t, the cumulative displacement of a static gate's logits or an instance gate's bias,
p_t − p(0), splits into ``decay`` = (f_t − 1)·p(0) and ``rest`` = p_t − f_t·p(0) (the gradient's part, including
its interaction with decay through momentum). For an instance gate's weight rows W_i, in norms:
``decay`` = |f_t − 1|·‖W_i(0)‖ and ``rest`` = ‖W_i,t − f_t·W_i(0)‖. Quantities a recording does not hold are NaN.

Torch-free (numpy only).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recorders.format import (
    LR,
    STEP,
    GateSetSpec,
    GroupSpec,
    Recording,
    gate_path,
    term_series,
)

FACTORS = ("one_minus_sigma", "norm", "cos")
_RECORDED = dict(zip(FACTORS, ("factor_sigma", "factor_norm", "factor_cos"), strict=True))
PHASES = ("early", "middle", "late")
LABELS = {"one_minus_sigma": "1−σ", "norm": "‖u‖", "cos": "|cos|"}


def random_cosine(dim: int) -> float:
    """E|cos| between a fixed vector and a uniformly random direction in ``dim`` dimensions (≈ √(2/(π·dim)))."""
    if dim < 1:
        return math.nan
    if dim == 1:
        return 1.0
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def decay_only_path(lr: np.ndarray, group: GroupSpec) -> np.ndarray:
    """f_t for t = 0..len(lr): SGD with a zero gradient takes a parameter p to f_t·p after t updates; ``(len(lr)+1,)``
    float64, f_0 = 1.

    ``lr``: (updates,) scheduled base learning rates; the group's ``lr_scale``, ``weight_decay``, ``momentum``,
    ``dampening`` and ``nesterov`` apply as in ``torch.optim.SGD`` (decay added to the gradient). The map is linear
    in p, so one scalar replay serves every parameter of the group.
    """
    out = np.ones(len(lr) + 1)
    wd, mom, damp = group.weight_decay, group.momentum, group.dampening
    if wd == 0.0:
        return out
    p, buf = 1.0, 0.0
    for i, eta in enumerate((np.asarray(lr, np.float64) * group.lr_scale).tolist()):
        d = wd * p
        if mom:
            buf = d if i == 0 else mom * buf + (1.0 - damp) * d
            d = d + mom * buf if group.nesterov else buf
        p -= eta * d
        out[i + 1] = p
    return out


def decay_only_factor(lr: np.ndarray, group: GroupSpec) -> float:
    """f after ``len(lr)`` updates (see :func:`decay_only_path`)."""
    return float(decay_only_path(lr, group)[-1])


# ---------------------------------------------------------------------------------------------------- factors
@dataclass
class GateFactors:
    """The ratio factors of one gate set over ``k`` strided rows; arrays ``(k, n_gates)``, NaN where unrecorded."""

    name: str
    kind: str
    steps: np.ndarray  # (k,) int64
    factors: dict[str, np.ndarray]  # FACTORS → (k, n_gates)
    ratio: np.ndarray  # (k, n_gates) product of the factors
    parts: dict[str, np.ndarray]  # "task" and each direct term → (k, n_gates) part of ∂L/∂g before any rescale
    vector_dim: int  # length of u (0: unknown)
    references: dict[str, float]  # FACTORS → value for an uninformed gate

    @property
    def recorded(self) -> bool:
        return bool(np.isfinite(self.ratio).any())


def gate_factors(rec: Recording, spec: GateSetSpec, stride: int = 1) -> GateFactors:
    """Factors, ratio and gradient parts of gate set ``spec`` from every ``stride``-th row (see the module doc)."""
    steps = rec.read(STEP, stride=stride)
    shape = (len(steps), spec.n_gates)

    def read(series: str) -> np.ndarray:
        path = gate_path(spec.name, series)
        return rec.read(path, stride=stride).astype(np.float64) if rec.has(path) else np.full(shape, np.nan)

    factors = {k: read(v) for k, v in _RECORDED.items()}
    parts = {"task": read("grad_task"), **{t: read(term_series(t)) for t in spec.terms}}
    norm0 = factors["norm"][0] if len(steps) else np.full(spec.n_gates, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        references = {
            "one_minus_sigma": 0.5,
            "norm": float(np.exp(np.nanmean(np.log(norm0)))) if np.isfinite(norm0).any() else math.nan,
            "cos": random_cosine(spec.vector_dim),
        }
    ratio = factors["one_minus_sigma"] * factors["norm"] * factors["cos"]
    return GateFactors(spec.name, spec.kind, steps, factors, ratio, parts, spec.vector_dim, references)


@dataclass
class FactorSummary:
    """Per phase: log10 of the geometric mean (over gates and rows) of the ratio and of each factor (they add up),
    each term's share of the gate gradient, and the dominant factor."""

    name: str
    kind: str
    log10: dict[str, dict[str, float]]  # phase → {"ratio", *FACTORS} → log10 geometric mean
    references: dict[str, float]
    shares: dict[str, dict[str, float]]  # phase → part → Σ|part| / Σ|all parts|
    dominant: dict[str, str]  # phase → factor name ("" when unrecorded)
    vector_dim: int

    def line(self, phase: str = "late") -> str:
        """One line naming the factor that holds the ratio down in ``phase``, against its reference."""
        logs = self.log10.get(phase, {})
        top = self.dominant.get(phase, "")
        if not top:
            return f"{self.name}: ratio factors not recorded (record with this version of ws to see them)"
        parts = " × ".join(f"{LABELS[f]} {10 ** logs[f]:.3g}" for f in FACTORS)
        ref = self.references[top]
        against = (
            f"{10 ** logs[top] / ref:.2g}× a random direction in {self.vector_dim} d"
            if top == "cos"
            else f"{10 ** logs[top] / ref:.2g}× " + ("an undecided gate (0.5)" if top == "one_minus_sigma" else "init")
        )
        share = self.shares.get(phase, {}).get("task", math.nan)
        via = f"; {share:.0%} of |∂L/∂g| through the prompt" if math.isfinite(share) else ""
        return (
            f"{self.name}: {phase} ratio {10 ** logs['ratio']:.3g} = {parts}; dominant {LABELS[top]} ({against}){via}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "vector_dim": self.vector_dim,
            "log10": {p: {k: _plain(v) for k, v in d.items()} for p, d in self.log10.items()},
            "references": {k: _plain(v) for k, v in self.references.items()},
            "shares": {p: {k: _plain(v) for k, v in d.items()} for p, d in self.shares.items()},
            "dominant": self.dominant,
            "line": self.line(),
        }


def summarize_factors(f: GateFactors) -> FactorSummary:
    """Split log10 ratio into its three log-factors per phase (thirds of the rows) and name the dominant one."""
    thirds = np.array_split(np.arange(len(f.steps)), 3)
    log10: dict[str, dict[str, float]] = {}
    shares: dict[str, dict[str, float]] = {}
    dominant: dict[str, str] = {}
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for phase, idx in zip(PHASES, thirds, strict=True):
            rows = {k: v[idx] for k, v in f.factors.items()}
            ok = np.isfinite(rows["one_minus_sigma"]) & np.isfinite(rows["norm"]) & np.isfinite(rows["cos"])
            logs = {k: float(np.mean(np.log10(v[ok]))) if ok.any() else math.nan for k, v in rows.items()}
            logs["ratio"] = sum(logs[k] for k in FACTORS)
            log10[phase] = logs
            finite = {k: v for k, v in logs.items() if k != "ratio" and math.isfinite(v)}
            dominant[phase] = min(finite, key=finite.__getitem__) if len(finite) == len(FACTORS) else ""
            sizes = {
                k: np.nansum(np.abs(v[idx])) if np.isfinite(v[idx]).any() else math.nan for k, v in f.parts.items()
            }
            total = sum(v for v in sizes.values() if math.isfinite(v))
            shares[phase] = {k: v / total if total > 0 else math.nan for k, v in sizes.items()}
    return FactorSummary(f.name, f.kind, log10, f.references, shares, dominant, f.vector_dim)


# ---------------------------------------------------------------------------------------------------- movement
@dataclass
class Movement:
    """Cumulative movement of one parameter of a gate set over ``k`` rows, ``(k, n_gates)``: the total, the part
    SGD with only weight decay would have made, and the rest. ``norms``: the parts are norms of weight rows (not
    signed, and not additive); otherwise signed displacements with ``decay + rest = total``."""

    total: np.ndarray
    decay: np.ndarray
    rest: np.ndarray
    norms: bool = False


@dataclass
class GateMovement:
    """Movement attribution of one gate set: ``logit`` (static gates), ``bias`` and ``weight`` (instance gates)."""

    name: str
    kind: str
    steps: np.ndarray  # (k,)
    decay_factor: np.ndarray  # (k,) f_t at each row
    parts: dict[str, Movement] = field(default_factory=dict)


def gate_movement(rec: Recording, spec: GateSetSpec, stride: int = 1) -> GateMovement:
    """Movement of gate set ``spec`` split into decay-only and the rest at every ``stride``-th row."""
    steps = rec.read(STEP, stride=stride)
    k, n = len(steps), spec.n_gates
    nan = np.full((k, n), np.nan)
    group = rec.groups.get(spec.group)
    rows = np.arange(0, rec.n_steps, stride)[:k]
    if group is None:
        f = np.full(k, np.nan)
    else:
        lr = rec.read(LR).astype(np.float64)
        f = decay_only_path(lr[: max(rec.n_steps - 1, 0)], group)[rows]
    out = GateMovement(spec.name, spec.kind, steps, f)

    def read(series: str) -> np.ndarray:
        path = gate_path(spec.name, series)
        return rec.read(path, stride=stride).astype(np.float64) if rec.has(path) else nan

    def signed(values: np.ndarray, init: tuple[float, ...]) -> Movement:
        p0 = np.asarray(init, np.float64) if len(init) == n else np.full(n, np.nan)
        decay = (f[:, None] - 1.0) * p0
        return Movement(values - p0, decay, values - f[:, None] * p0)

    if spec.kind != "instance":
        out.parts["logit"] = signed(read("logit"), spec.init_logit)
        return out
    out.parts["bias"] = signed(read("bias"), spec.init_bias)
    w0 = np.asarray(spec.init_weight_norm, np.float64) if len(spec.init_weight_norm) == n else np.full(n, np.nan)
    shift, along = read("weight_shift"), read("weight_along_init")
    c = 1.0 - f[:, None]
    rest = np.sqrt(np.maximum(shift**2 + c**2 * w0**2 + 2.0 * c * along * w0, 0.0))
    out.parts["weight"] = Movement(shift, np.abs(c) * w0, rest, norms=True)
    return out


def movement_summary(m: GateMovement) -> dict[str, Any]:
    """JSON-ready: per part, the mean over gates of |decay| and |rest| at the last row and the decay share."""
    out: dict[str, Any] = {}
    for part, mv in m.parts.items():
        if not len(m.steps):
            continue
        decay, rest = float(np.mean(np.abs(mv.decay[-1]))), float(np.mean(np.abs(mv.rest[-1])))
        out[part] = {
            "decay": _plain(decay),
            "rest": _plain(rest),
            "decay_share": _plain(decay / (decay + rest)) if decay + rest > 0 else None,
        }
    return out


def mechanism(rec: Recording, max_points: int = 4096) -> dict[str, dict[str, Any]]:
    """Per gate set of ``rec``: the factor summary and the movement summary (JSON-ready), read with a stride so
    that at most ``max_points`` rows are used."""
    stride = max(1, math.ceil(rec.n_steps / max_points))
    out = {}
    for name, spec in rec.gate_sets.items():
        out[name] = {
            "factors": summarize_factors(gate_factors(rec, spec, stride)).to_dict(),
            "movement": movement_summary(gate_movement(rec, spec, stride)),
        }
    return out


def _plain(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
