"""The collapse verdict of a gate set, from scale-free evidence (definitions and reasons in ``docs/analyses.md``).

Two kinds of evidence, each a :class:`Criterion` with its numbers:

- **functional** (from the last evaluation's per-image correctness, schema 1.1): for each counterfactual —
  ``mean`` (instance gates held at their test-set mean), ``init`` (gates computed with their initial parameters),
  ``open`` (gates removed, σ = 1) — the HM drop trained − counterfactual with a stratified percentile bootstrap
  interval over test images (base and novel resampled separately) and an exact McNemar test on the pooled
  discordant pairs (``scipy.stats.binomtest``). The counterfactuals that remove what the gates *learned* decide:
  ``init`` for static gates, ``mean`` and ``init`` for instance gates; ``open`` is reported only (uniform gates are
  a rescale of the context that the context itself absorbs, so removing them changes the prompt, not the gating).
- **dynamics** (from the per-step rows): the gradient-driven movement in σ units, σ(g_T) − σ(decay-only g_T) (total
  minus what weight decay alone does, :func:`decay_only_logits`); the consistency of ∂L/∂g over windows, the mean
  of S² = (Σ_w ∂L/∂g)² / Σ_w (∂L/∂g)² against its 95th percentile under random signs of the same magnitudes (S² = 1
  on average for a sign-random gradient, = w for a constant one); for instance gates, the across-input standard
  deviation of σ over the test images at the last evaluation relative to the first (before training).

Rules: ``adaptive`` when a deciding counterfactual lowers HM significantly (interval above 0); ``collapsed`` when
every deciding counterfactual is within noise (interval contains 0) and the gates are still: their dynamics are quiet
from an onset to the end over at least ``quiet_min_fraction`` of the run (and, for instance gates, the across-input
spread did not grow ``spread_growth_min``-fold); ``inconclusive`` otherwise, naming the missing or contradicting
evidence. Onset: on a grid of windows whose size scales with the run (``n_rows // windows`` rows), the first window
start from which every later window start is quiet — the gradient-driven movement from it to the end of the run
is below ``movement_min``, or the window's gradient is sign-random. The whole-run movement and sign consistency
are reported as criteria too.

Torch-free; reads only the series it uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm

from recorders.format import LR, GateSetSpec, Recording, gate_path

VERDICTS = ("collapsed", "adaptive", "inconclusive")
MONTE_CARLO_CELLS = 4_000_000  # above this many sign draws × gradient cells the reference is the normal limit


@dataclass(frozen=True)
class VerdictThresholds:
    """The parameters of the rules (each with its reason in ``docs/analyses.md``)."""

    alpha: float = 0.05  # two-sided level of the bootstrap interval and the McNemar test
    n_boot: int = 2000  # bootstrap resamples of the test images
    movement_min: float = 0.01  # gradient-driven |Δσ| below this: the gate was not moved by the task
    sign_quantile: float = 0.95  # mean S² above this quantile of its sign-random law: a consistent gradient
    n_sign_draws: int = 400  # Monte Carlo draws of the sign-random reference
    spread_growth_min: float = 2.0  # instance gates: across-input std must grow this much over its init value
    quiet_min_fraction: float = 1 / 3  # the quiet stretch before the end must span this much of the run
    windows: int = 10  # the onset grid has n_rows // windows rows per window ...
    min_window: int = 2  # ... but at least this many rows
    seed: int = 0  # of the bootstrap and the sign draws (the verdict is deterministic)


@dataclass
class Criterion:
    """One piece of evidence: ``holds`` is True/False, or None when it could not be measured (``missing``)."""

    name: str
    holds: bool | None
    text: str  # one line: the numbers and what they mean
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Counterfactual:
    """The last evaluation against one counterfactual: accuracies in [0, 1], HM drop = trained − counterfactual."""

    kind: str
    step: int
    base: float
    novel: float
    hm: float
    drop_hm: float
    drop_lo: float  # bootstrap interval of drop_hm
    drop_hi: float
    trained_only: int  # images the trained model gets right and the counterfactual wrong
    counterfactual_only: int
    mcnemar_p: float

    @property
    def significant(self) -> bool:
        return self.drop_lo > 0 or self.drop_hi < 0


@dataclass
class Verdict:
    """A gate set's verdict, its onset step (collapsed only) and the criteria that decided it."""

    verdict: str
    onset_step: int | None
    criteria: list[Criterion]
    missing: list[str]  # evidence that was not recorded or not measurable
    counterfactuals: dict[str, Counterfactual]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "onset_step": self.onset_step,
            "missing": self.missing,
            "criteria": [asdict(c) for c in self.criteria],
            "counterfactuals": {k: asdict(c) for k, c in self.counterfactuals.items()},
        }


# ------------------------------------------------------------------------------------------------ functional
def counterfactual_evidence(rec: Recording, th: VerdictThresholds | None = None) -> dict[str, Counterfactual]:
    """Per recorded counterfactual, the comparison at the last evaluation (``{}`` for 1.0 recordings)."""
    th = th or VerdictThresholds()
    correct = rec.eval_correct()
    spec = rec.evaluation
    if not correct or spec is None or not len(correct["trained"]):
        return {}
    step = int(rec.eval_table()["step"][len(correct["trained"]) - 1])
    trained = correct["trained"][-1]
    return {
        kind: compare_correct(kind, step, trained, correct[kind][-1], spec.n_base, th) for kind in spec.counterfactuals
    }


def compare_correct(
    kind: str, step: int, trained: np.ndarray, other: np.ndarray, n_base: int, th: VerdictThresholds
) -> Counterfactual:
    """Paired comparison of two per-image correctness vectors ``(n,)`` (base images ``[:n_base]`` first)."""
    t, o = np.asarray(trained, bool), np.asarray(other, bool)
    b10, b01 = int((t & ~o).sum()), int((~t & o).sum())
    p = binomtest(b10, b10 + b01, 0.5).pvalue if b10 + b01 else 1.0
    base, novel = _mean(o[:n_base]), _mean(o[n_base:])
    drop = _hm(_mean(t[:n_base]), _mean(t[n_base:])) - _hm(base, novel)
    lo, hi = _bootstrap_drop(t, o, n_base, th)
    return Counterfactual(kind, step, base, novel, _hm(base, novel), drop, lo, hi, b10, b01, float(p))


def _bootstrap_drop(t: np.ndarray, o: np.ndarray, n_base: int, th: VerdictThresholds) -> tuple[float, float]:
    """Percentile interval of the HM drop, resampling base and novel test images separately (stratified)."""
    rng = np.random.default_rng(th.seed)
    n = len(t)
    if (t == o).all():
        return 0.0, 0.0
    halves = [np.arange(n_base), np.arange(n_base, n)]
    acc = []
    for idx in halves:
        if not len(idx):
            acc.append((np.full(th.n_boot, np.nan), np.full(th.n_boot, np.nan)))
            continue
        draw = rng.integers(0, len(idx), (th.n_boot, len(idx)))
        acc.append((t[idx][draw].mean(1), o[idx][draw].mean(1)))
    (tb, ob), (tn, on) = acc
    drops = _hm_array(tb, tn) - _hm_array(ob, on)
    q = np.nanquantile(drops, [th.alpha / 2, 1 - th.alpha / 2])
    return float(q[0]), float(q[1])


def deciding_counterfactuals(kind: str) -> tuple[str, ...]:
    """The counterfactuals that remove what a gate set of ``kind`` learned (``open`` never decides)."""
    return ("mean", "init") if kind == "instance" else ("init",)


# ------------------------------------------------------------------------------------------------ dynamics
def decay_only_logits(rec: Recording, spec: GateSetSpec, lr: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Where weight decay alone takes ``logits`` ``(n_gates,)`` over the updates in ``lr`` (scheduled base rates).

    The one place the verdict asks for the decay counterfactual (swap in a per-step attribution here). Instance
    gates' recorded logits are batch means of a linear map, which decay does not shrink as a whole: unchanged.
    """
    from analyses.diagnostics import decay_only_factor

    group = rec.groups.get(spec.group)
    if spec.kind == "instance" or group is None:
        return logits
    return decay_only_factor(lr, group) * logits


def sign_consistency(grad: np.ndarray, window: int, th: VerdictThresholds) -> tuple[float, float]:
    """(mean S², its ``sign_quantile`` under random signs) over the non-overlapping windows of ``grad``
    ``(rows, n_gates)``; S² = (Σ g)² / Σ g² per window and gate. A step without a finite gradient (a gate the
    step did not call, a skipped non-finite step) is missing: it adds nothing to its window's sums. NaN when no
    window has a nonzero gradient."""
    g = np.asarray(grad, np.float64)
    k = (len(g) // window) * window
    if k == 0:
        return math.nan, math.nan
    w = g[:k].reshape(k // window, window, -1).transpose(0, 2, 1).reshape(-1, window)  # (windows·gates, window)
    w = np.where(np.isfinite(w), w, 0.0)
    w = w[np.abs(w).sum(1) > 0]
    if not len(w):
        return math.nan, math.nan
    energy = (w**2).sum(1)
    observed = float((w.sum(1) ** 2 / energy).mean())
    if w.size * th.n_sign_draws > MONTE_CARLO_CELLS:  # many windows: the mean is normal; its exact moments
        var = 2.0 * (1.0 - (w**4).sum(1) / energy**2)  # Var S² per window under random signs (E S² = 1)
        return observed, 1.0 + float(norm.ppf(th.sign_quantile)) * math.sqrt(var.sum()) / len(w)
    rng = np.random.default_rng(th.seed)
    signs = rng.choice([-1.0, 1.0], size=(th.n_sign_draws, *w.shape))
    null = ((signs * w).sum(2) ** 2 / energy).mean(1)
    return observed, float(np.quantile(null, th.sign_quantile))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def gradient_movement(rec: Recording, spec: GateSetSpec, lr: np.ndarray, start: int = 0) -> float:
    """max over gates of |σ(g_T) − σ(decay-only g_T)| from row ``start`` to the last row, in σ units."""
    n = rec.n_steps
    if n == 0:
        return math.nan
    path = gate_path(spec.name, "logit")
    first = rec.row(path, start).astype(np.float64)
    if start == 0 and spec.kind != "instance" and len(spec.init_logit) == spec.n_gates:
        first = np.asarray(spec.init_logit, np.float64)
    last = rec.row(path, -1).astype(np.float64)
    decayed = decay_only_logits(rec, spec, lr[start : n - 1], first)
    return float(np.nanmax(np.abs(_sigmoid(last) - _sigmoid(decayed))))


def spread_growth(rec: Recording, spec: GateSetSpec) -> tuple[float, float, float]:
    """(first, last, last/first) mean over gates of the across-input std of σ over the test images; NaN when the
    recording has no such statistics (schema 1.0)."""
    stats = rec.eval_gate_stats(spec.name)
    if not stats or len(stats["std"]) < 2:
        return math.nan, math.nan, math.nan
    first, last = float(np.nanmean(stats["std"][0])), float(np.nanmean(stats["std"][-1]))
    return first, last, (last / first if first > 0 else math.inf)


# ------------------------------------------------------------------------------------------------ verdict
def judge(rec: Recording, spec: GateSetSpec, th: VerdictThresholds | None = None) -> Verdict:
    """The verdict of gate set ``spec`` of ``rec`` with every criterion (see the module docstring)."""
    th = th or VerdictThresholds()
    cfs = counterfactual_evidence(rec, th)
    return judge_with(rec, spec, cfs, th)


def judge_with(rec: Recording, spec: GateSetSpec, cfs: dict[str, Counterfactual], th: VerdictThresholds) -> Verdict:
    """:func:`judge` with the counterfactual evidence already computed (shared by a recording's gate sets)."""
    criteria: list[Criterion] = []
    missing: list[str] = []
    instance = spec.kind == "instance"

    # functional
    deciding = [cfs[k] for k in deciding_counterfactuals(spec.kind) if k in cfs]
    if not deciding:
        missing.append("counterfactual evaluation (not recorded: a schema 1.0 recording, or no evaluation)")
        functional = Criterion("functional", None, "not recorded: no counterfactual evaluation in this recording")
    else:
        worse = [c for c in deciding if c.drop_lo > 0]
        better = [c for c in deciding if c.drop_hi < 0]
        text = "; ".join(_cf_text(c) for c in deciding)
        values = {f"{c.kind}_drop_hm": c.drop_hm for c in deciding}
        functional = Criterion("functional", bool(worse), text, values)
        if better and not worse:
            functional.text += " — the gates LOWER accuracy"
    criteria.append(functional)
    for c in cfs.values():
        if c.kind not in deciding_counterfactuals(spec.kind):
            criteria.append(Criterion(f"reported:{c.kind}", c.significant, _cf_text(c) + " (reported, not deciding)"))

    # dynamics
    n = rec.n_steps
    lr = rec.read(LR).astype(np.float64) if n else np.empty(0)
    movement = gradient_movement(rec, spec, lr) if n else math.nan
    window = max(th.min_window, n // th.windows)
    grad = rec.read(gate_path(spec.name, "grad")) if n else np.empty((0, spec.n_gates))
    s2, s2_ref = sign_consistency(grad, window, th)
    moves = None if math.isnan(movement) else movement >= th.movement_min
    consistent = None if math.isnan(s2) else s2 > s2_ref
    criteria.append(
        Criterion(
            "movement",
            moves,
            f"gradient-driven |Δσ| {_f(movement)} (total minus decay-only; threshold {th.movement_min})",
            {"gradient_movement": movement},
        )
    )
    criteria.append(
        Criterion(
            "consistency",
            consistent,
            f"mean S² {_f(s2)} over {window}-step windows vs {_f(s2_ref)} for random signs "
            f"({'consistent' if consistent else 'sign-random' if consistent is False else 'unmeasured'})",
            {"sign_s2": s2, "sign_s2_random": s2_ref, "window": float(window)},
        )
    )
    if moves is None or consistent is None:
        missing.append("gate dynamics (no recorded steps or gradients)")
    onset_row = onset_index(rec, spec, lr, grad, window, th) if n else None
    quiet_fraction = (n - onset_row) / n if onset_row is not None else 0.0
    still = None if moves is None or consistent is None else quiet_fraction >= th.quiet_min_fraction
    onset = int(rec.read("steps/step", onset_row, onset_row + 1)[0]) if onset_row is not None else None
    criteria.append(
        Criterion(
            "still",
            still,
            f"quiet (moved < {th.movement_min} σ by gradient to the end, or a sign-random gradient) from step "
            f"{'-' if onset is None else onset}: {quiet_fraction:.0%} of the run (needs ≥ {th.quiet_min_fraction:.0%})",
            {"quiet_fraction": quiet_fraction},
        )
    )
    if instance:
        first, last, growth = spread_growth(rec, spec)
        grew = None if math.isnan(growth) else growth >= th.spread_growth_min
        criteria.append(
            Criterion(
                "input_spread",
                grew,
                f"across-input std of σ on the test images {_f(first)} → {_f(last)} (×{_f(growth)}; "
                f"grown if ≥ ×{th.spread_growth_min})",
                {"spread_init": first, "spread_final": last, "spread_growth": growth},
            )
        )
        if grew is None:
            missing.append("instance-gate spread over the test images (not recorded: schema 1.0)")
            still = None
        elif still is not None:
            still = still and not grew

    verdict = "inconclusive"
    hurts = any(c.drop_hi < 0 for c in deciding)
    if functional.holds:
        verdict = "adaptive"
    elif functional.holds is False and not hurts and still:
        verdict = "collapsed"
    elif functional.holds is False and still is False:
        missing.append("a functional effect of gates that kept moving by a consistent gradient")
    elif functional.holds is False and hurts:
        missing.append("agreement: the learned gates lower accuracy")
    return Verdict(verdict, onset if verdict == "collapsed" else None, criteria, missing, cfs)


def onset_index(
    rec: Recording, spec: GateSetSpec, lr: np.ndarray, grad: np.ndarray, window: int, th: VerdictThresholds
) -> int | None:
    """Row of the first window start from which every later one is quiet (module docstring); None if the last
    window is not quiet."""
    starts = list(range(0, rec.n_steps, window))
    quiet = []
    for start in starts:
        g = grad[start : start + window].astype(np.float64)
        s2, ref = sign_consistency(g, len(g), th) if len(g) >= th.min_window else (math.nan, math.nan)
        random_signs = not (s2 > ref)  # NaN (no gradient) counts as quiet
        quiet.append(random_signs or gradient_movement(rec, spec, lr, start) < th.movement_min)
    loud = [i for i, q in enumerate(quiet) if not q]
    first = loud[-1] + 1 if loud else 0
    return starts[first] if first < len(starts) else None


def _cf_text(c: Counterfactual) -> str:
    return (
        f"{c.kind}: HM {c.hm:.4f}, drop {c.drop_hm:+.4f} [{c.drop_lo:+.4f}, {c.drop_hi:+.4f}], "
        f"McNemar p {c.mcnemar_p:.3g} ({c.trained_only}/{c.counterfactual_only} discordant)"
    )


def _f(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if len(a) else math.nan


def _hm(b: float, n: float) -> float:
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


def _hm_array(b: np.ndarray, n: np.ndarray) -> np.ndarray:
    total = b + n
    return np.where(total > 0, 2 * b * n / np.where(total > 0, total, 1), 0.0)
