"""Synthetic recordings written with the real :class:`RecordingWriter`, built to be collapsed or adaptive.

Torch-free, deterministic (``numpy.random.default_rng(seed)``), fast (a few ms per 1k steps). Any test may
use it: ``from synthetic import write_run`` (pytest puts ``tests/`` on the path).

Behaviours (one gate set ``ctx_gates`` scaling the prompt set ``ctx``, gate parameters in group ``gates``):

- ``collapsed``: from ``onset_step`` on (default 0) the gate logits follow exactly what weight decay alone
  does (SGD with the group's momentum, dampening and weight decay, zero gradient) and the gate gradients are
  ``1e-4 ×`` the per-token prompt gradient norms; before the onset they behave as ``adaptive``;
- ``adaptive``: logits random-walk with a drift of about 1 logit over the run, gate gradients ``0.3 ×`` the
  prompt gradient norms, instance gates vary across inputs (``value_std`` ≈ 0.1);
- ``none``: no gates at all (a CoOp-like run).

With ``evidence`` (default) the recording is schema 1.1: each evaluation has a validation accuracy (highest at
the best evaluation), per-image correctness of 100 base + 100 novel test images for the trained model and the
counterfactuals — ``adaptive``: ``init`` (and ``mean`` for instance gates) get 10% of the images the trained
model gets right wrong; ``collapsed``: identical predictions — and, for instance gates, the across-input std of σ
over the test images (``adaptive`` 0.01 → 0.1, ``collapsed`` 0.01 → 1e-6). Gate gradients before the onset have a
constant sign per gate (a consistent task gradient); after it they are sign-random.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recorders.format import (
    EPOCH,
    LR,
    STEP,
    EvalSpec,
    GateSetSpec,
    GroupSpec,
    Layout,
    PromptSpec,
    RecordingWriter,
    gate_path,
    grad_norm_path,
    loss_path,
    prompt_path,
)

GATES = "ctx_gates"
PROMPT = "ctx"
GATE_GROUP = "gates"
PROMPT_GROUP = "ctx"


def decay_only_path(
    init: float, lr: np.ndarray, *, weight_decay: float, momentum: float, dampening: float = 0.0
) -> np.ndarray:
    """Logit before each step when SGD sees a zero gradient: ``(len(lr),)``, element 0 is ``init``."""
    out = np.empty(len(lr))
    p, buf = float(init), 0.0
    for i, eta in enumerate(lr):
        out[i] = p
        d = weight_decay * p
        buf = d if i == 0 else momentum * buf + (1.0 - dampening) * d
        p -= eta * (buf if momentum else d)
    return out


def cosine_lr(n_steps: int, base: float = 0.002) -> np.ndarray:
    """A cosine schedule from ``base`` towards 0 over ``n_steps`` steps, float64 ``(n_steps,)``."""
    return base * 0.5 * (1.0 + np.cos(np.pi * np.arange(n_steps) / max(n_steps, 1)))


def write_run(
    path: str | Path,
    *,
    behaviour: str = "collapsed",
    method: str = "coop-gating",
    dataset: str = "world",
    seed: int = 0,
    n_steps: int = 1000,
    n_gates: int = 4,
    gate_kind: str = "length",
    onset_step: int = 0,
    init_logit: float = 3.0,
    base_lr: float = 0.002,
    lr_scale: float = 1.0,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    final: tuple[float, float] = (0.80, 0.70),
    eval_every: int = 0,
    config: Mapping[str, Any] | None = None,
    status: str = "complete",
    flush_every: int = 4096,
    evidence: bool = True,
) -> Path:
    """Write one synthetic recording and return its path.

    ``final`` = (base_acc, novel_acc) of the last evaluation; evaluations every ``eval_every`` steps
    (default: 5 per run) ramp up to a best of ``final + 0.02`` at 80% of the run, so best and final differ.
    ``config`` defaults to ``{"method", "dataset", "seed", "shots": 16}`` and is merged over that. ``status``
    ``running`` leaves the file as a killed run would (no close), ``failed`` closes it as failed.
    """
    if behaviour not in ("collapsed", "adaptive", "none"):
        raise ValueError(f"unknown behaviour {behaviour!r}")
    path = Path(path)
    rng = np.random.default_rng(seed * 7919 + n_steps)
    instance = gate_kind == "instance"
    groups = [GroupSpec(PROMPT_GROUP, "prompt", n_gates * 8, weight_decay=weight_decay, momentum=momentum)]
    gate_sets: tuple[GateSetSpec, ...] = ()
    if behaviour != "none":
        groups.append(
            GroupSpec(GATE_GROUP, "gate", n_gates, lr_scale=lr_scale, weight_decay=weight_decay, momentum=momentum)
        )
        gate_sets = (
            GateSetSpec(
                GATES,
                n_gates,
                gate_kind,
                prompt=PROMPT,
                group=GATE_GROUP,
                init_logit=() if instance else (init_logit,) * n_gates,
            ),
        )
    cfs = (("mean",) if instance else ()) + ("init", "open") if behaviour != "none" else ()
    spec = EvalSpec(100, 100, cfs, (GATES,) if instance and behaviour != "none" else ()) if evidence else None
    layout = Layout(
        loss_terms=("total",),
        groups=tuple(groups),
        gate_sets=gate_sets,
        prompts=(PromptSpec(PROMPT, n_gates, PROMPT_GROUP),),
        evaluation=spec,
    )
    cfg = {"method": method, "dataset": dataset, "seed": seed, "shots": 16, **(config or {})}

    steps = np.arange(n_steps)
    lr = cosine_lr(n_steps, base_lr)
    prompt_grad = (1e-2 * rng.lognormal(0.0, 0.3, (n_steps, n_gates))).astype(np.float32)
    block: dict[str, np.ndarray] = {
        STEP: steps,
        EPOCH: steps // 100,
        LR: lr,
        loss_path("total"): 2.0 * np.exp(-steps / max(n_steps, 1)) + 0.05 * rng.random(n_steps),
        grad_norm_path(PROMPT_GROUP): np.linalg.norm(prompt_grad, axis=1),
        prompt_path(PROMPT, "grad_norm"): prompt_grad,
        prompt_path(PROMPT, "norm"): np.full((n_steps, n_gates), 0.5, np.float32),
    }
    if behaviour != "none":
        onset = n_steps if behaviour == "adaptive" else min(max(onset_step, 0), n_steps)
        start = 0.0 if instance else init_logit
        noise = rng.normal(0.0, 1.5 / math.sqrt(max(n_steps, 1)), (n_steps, n_gates))
        walk = start + np.cumsum(noise, axis=0)
        walk[0] = start
        logit = walk.copy()
        if onset < n_steps:
            decay = decay_only_path(1.0, lr[onset:], weight_decay=weight_decay * (not instance), momentum=momentum)
            logit[onset:] = logit[onset - 1 if onset else 0] * decay[:, None]
        signs = np.where(steps[:, None] < onset, 1.0, np.sign(rng.normal(size=(n_steps, n_gates))))
        ratio = np.where(steps < onset, 0.3, 1e-4)[:, None] * signs
        value = 1.0 / (1.0 + np.exp(-logit))
        block.update(
            {
                gate_path(GATES, "logit"): logit,
                gate_path(GATES, "value"): value,
                gate_path(GATES, "dsigmoid"): value * (1.0 - value),
                gate_path(GATES, "grad"): ratio * prompt_grad,
                grad_norm_path(GATE_GROUP): np.linalg.norm(ratio * prompt_grad, axis=1),
            }
        )
        if instance:
            std = np.where(steps < onset, 0.1, 1e-6)[:, None] * np.ones((1, n_gates))
            block[gate_path(GATES, "value_mean")] = value
            block[gate_path(GATES, "value_std")] = std

    writer = RecordingWriter(
        path, layout, config=cfg, method=method, seed=seed, device="cpu", dataset=dataset, flush_every=flush_every
    )
    writer.append_block(block)
    n_evals = 5 if eval_every <= 0 else max(1, n_steps // eval_every)
    base, novel = final
    for j in range(1, n_evals + 1):
        frac = j / n_evals
        step = max(0, int(round(frac * n_steps)) - 1)
        lift = 0.02 if frac >= 0.8 and j < n_evals else 0.0
        scale = min(1.0, frac / 0.8)
        b, n = base * scale + lift, novel * scale + lift
        if spec is None:
            writer.add_eval(step, step // 100, b, n)
            continue
        trained = np.concatenate([np.arange(100) < round(b * 100), np.arange(100) < round(n * 100)])
        correct = {"trained": trained}
        for kind in cfs:
            other = trained.copy()
            if behaviour == "adaptive" and kind != "open":
                other[np.flatnonzero(trained)[::10]] = False
            correct[kind] = other
        final_std = 0.1 if behaviour == "adaptive" else 1e-6
        stats = {GATES: {"std": np.full(n_gates, 0.01 if j == 1 else final_std)}}
        writer.add_eval(step, step // 100, b, n, val_acc=b, correct=correct, gate_stats=stats)
    if status == "running":
        writer.flush()
        writer._file.close()  # what a killed writer leaves: status stays "running"
    else:
        writer.close(status, "RuntimeError: synthetic failure" if status == "failed" else "")
    return path


def write_group(
    directory: str | Path, name: str, seeds: Sequence[int], hms: Sequence[float], *, key: str = "variant", **kwargs: Any
) -> list[Path]:
    """One recording per seed with config ``{key: name}`` and final base = novel = ``hm`` (final HM = hm)."""
    directory = Path(directory)
    config = {key: name, **kwargs.pop("config", {})}
    return [
        write_run(directory / f"{name}-s{seed}.h5", seed=seed, final=(hm, hm), config=config, **kwargs)
        for seed, hm in zip(seeds, hms, strict=True)
    ]


def write_two_gate_sets(
    path: str | Path, n_steps: int = 300, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An adaptive-bimaple-like recording with two static gate sets scaling one prompt set ``ctx``:
    ``length_gates_0`` (4 gates near σ=0.95, gradients ~1e-3) and ``depth_gates`` (3 gates random-walking around
    σ=0.5, gradients ~1e-1). Returns, per set, the float64 ``(value, ratio)`` each row holds: σ ``(n_steps,
    n_gates)`` and the gate/prompt gradient ratio mean|∂L/∂g| / mean‖∂L/∂p‖ ``(n_steps,)``."""
    rng = np.random.default_rng(seed)
    sets = {"length_gates_0": (4, 3.0, 1e-3), "depth_gates": (3, 0.0, 1e-1)}  # n_gates, start logit, grad scale
    layout = Layout(
        groups=(GroupSpec(PROMPT_GROUP, "prompt", 32), GroupSpec(GATE_GROUP, "gate", 7)),
        prompts=(PromptSpec(PROMPT, 4, PROMPT_GROUP),),
        gate_sets=tuple(
            GateSetSpec(
                name,
                n,
                "length" if name != "depth_gates" else "depth",
                prompt=PROMPT,
                group=GATE_GROUP,
                init_logit=(start,) * n,
            )
            for name, (n, start, _) in sets.items()
        ),
    )
    prompt_grad = rng.uniform(0.01, 0.02, (n_steps, 4))
    block = {
        STEP: np.arange(n_steps),
        EPOCH: np.arange(n_steps) // 100,
        LR: np.full(n_steps, 0.002),
        prompt_path(PROMPT, "grad_norm"): prompt_grad,
    }
    want = {}
    for name, (n, start, scale) in sets.items():
        logit = start + np.cumsum(rng.normal(0.0, 0.02, (n_steps, n)), axis=0)
        value = 1.0 / (1.0 + np.exp(-logit))
        grad = scale * rng.normal(size=(n_steps, n))
        block |= {
            gate_path(name, "logit"): logit,
            gate_path(name, "value"): value,
            gate_path(name, "dsigmoid"): value * (1.0 - value),
            gate_path(name, "grad"): grad,
        }
        want[name] = (value, np.abs(grad).mean(axis=1) / prompt_grad.mean(axis=1))
    with RecordingWriter(
        path,
        layout,
        config={"method": "adaptive-bimaple", "seed": seed},
        method="adaptive-bimaple",
        seed=seed,
        device="cpu",
    ) as writer:
        writer.append_block(block)
    return want
