"""The one training loop shared by every method: frozen CLIP, few-shot base classes, a full per-step recording.

SGD with momentum over named, roled parameter groups (gate groups get ``gate_lr_scale`` and
``gate_weight_decay``); the learning rate is constant ``warmup_lr`` for ``warmup_epochs`` and otherwise follows
a cosine over the whole run, evaluated per step (Dassl's schedule at step resolution). Each step: forward under
the backbone's autocast (bf16/fp16 on CUDA, float32 on CPU), backward, probe (after AMP unscaling, before
clipping), optional clipping, a non-finite check (``on_nan``: record a ``nonfinite`` event, then skip the step or
stop the run as ``failed``), optimiser step. Base and novel test accuracy, validation accuracy and, for gated
methods, the counterfactual evaluations (gates at their test-set mean, at init, removed; per-image correctness)
are recorded before training (epoch 0) and after every epoch (:mod:`recorders.train.evaluation`). Methods without
vision prompts read frozen image features from the feature cache (one of ``views`` augmented views per image per
epoch); the MaPLe family runs the vision encoder on freshly augmented pixels.

Row ``steps/epoch`` is the 0-based epoch a step belongs to; an evaluation's ``epoch`` counts completed epochs
and its ``step`` the optimiser steps taken so far. Seeds fix every random choice; on CPU the same config
gives identical recorded series.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from recorders.data.types import FewShotTask
from recorders.format import RECORDINGS_DIR, SATURATED_ABOVE, SATURATED_BELOW, EvalSpec, RecordingWriter
from recorders.format.errors import ConfigError, WsError
from recorders.format.writer import check_writable
from recorders.methods.base import ParamGroup, PromptMethod
from recorders.methods.gates import find_gates, gate_states
from recorders.methods.registry import build_method
from recorders.progress import Progress, silent
from recorders.train.config import Config
from recorders.train.evaluation import Evaluation, counterfactual_kinds, evaluate
from recorders.train.inputs import load_task, prepare_data, steps_per_epoch, train_batches

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone

#: Parameters larger than this store their full gradient proportionally less often than ``tensor_stride``.
TENSOR_BUDGET = 16384


@dataclass
class TrainResult:
    """What a finished run reports: its recording, evaluations before and after training, and its gates."""

    path: Path
    steps: int
    before: Evaluation | None
    after: Evaluation
    gate_summary: str
    groups: list[ParamGroup] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels (warnings, not errors)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def default_path(cfg: Config) -> Path:
    """``recordings/<method>-<dataset>-s<seed>-<YYYYmmdd-HHMMSS>.h5``."""
    return RECORDINGS_DIR / f"{cfg.method}-{cfg.dataset}-s{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}.h5"


def lr_at(step: int, cfg: Config, steps_per_epoch: int) -> float:
    """Base learning rate of optimiser step ``step`` (0-based): warm-up constant, then cosine to 0."""
    if step < cfg.warmup_epochs * steps_per_epoch:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / (cfg.epochs * steps_per_epoch)))


def make_optimizer(method: PromptMethod, cfg: Config) -> torch.optim.SGD:
    """SGD over the method's groups; each group carries ``name``, ``role`` and ``lr_scale``."""
    groups = []
    for group in method.groups():
        is_gate = group.role == "gate"
        scale = cfg.gate_lr_scale if is_gate else 1.0
        decay = cfg.gate_weight_decay if is_gate and cfg.gate_weight_decay is not None else cfg.weight_decay
        groups.append(
            {
                "params": group.params,
                "name": group.name,
                "role": group.role,
                "lr_scale": scale,
                "lr": cfg.lr * scale,
                "initial_lr": cfg.lr * scale,
                "weight_decay": decay,
            }
        )
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def tensor_stride(param: torch.Tensor, base: int) -> int:
    """Full gradients of big parameters are stored less often: ``base`` × ceil(numel / TENSOR_BUDGET)."""
    return base * max(1, math.ceil(param.numel() / TENSOR_BUDGET))


def loss_terms(method: PromptMethod) -> tuple[str, ...]:
    return ("total", "ce", *method.extra_losses())


def gate_summary(method: PromptMethod) -> str:
    """One line: per gate set (named as in the recording), mean σ, its range and how many gates are saturated
    (σ outside ``(SATURATED_BELOW, SATURATED_ABOVE)``)."""
    from recorders.train.probes import gate_set_name

    parts = []
    for name, gate in find_gates(method).items():
        logits = gate.logits if gate.logits is not None else gate.last_logits
        if logits is None:
            continue
        values = torch.sigmoid(logits.detach().float()).flatten()
        saturated = int(((values < SATURATED_BELOW) | (values > SATURATED_ABOVE)).sum())
        parts.append(
            f"{gate_set_name(name)} σ {values.mean():.3f} [{values.min():.3f}, {values.max():.3f}], "
            f"{saturated}/{values.numel()} saturated"
        )
    return "; ".join(parts) if parts else "no gates"


# ---------------------------------------------------------------------------------------------------- run
@dataclass
class PreparedRun:
    """Everything built and checked before the recording file is created."""

    cfg: Config
    method: PromptMethod
    task: FewShotTask
    path: Path
    force: bool = False  # replace an existing file at ``path`` (``ws record --force``)


def build_run(
    cfg: Config,
    *,
    backbone: Backbone | None = None,
    task: FewShotTask | None = None,
    cache_dir: Path | None = None,
    force: bool = False,
) -> PreparedRun:
    """Validate ``cfg``, load the backbone and the task (unless given) and build the method; writes nothing.

    The output path is checked first (it must not exist unless ``force``, nor be held by another process, and its
    directory must be writable), so a bad ``--out`` fails before anything expensive is loaded.
    """
    cfg.validate()
    path = Path(cfg.out) if cfg.out else default_path(cfg)
    check_writable(path, overwrite=force)
    if cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(
            f"warmup_epochs = {cfg.warmup_epochs} leaves no training after warm-up in "
            f"{cfg.epochs} epochs; lower warmup_epochs or raise epochs"
        )
    seed_everything(cfg.seed)
    if backbone is None:
        from recorders.clip.backbone import load_backbone

        backbone = load_backbone(cfg.backbone, cfg.device)
    task = task if task is not None else load_task(cfg, cache_dir)
    if not task.train:
        raise ConfigError(f"dataset {cfg.dataset!r} gave no training items; check --dataset and --shots")
    method = build_method(cfg, backbone)
    return PreparedRun(cfg, method, task, path, force)


def train(run: PreparedRun, *, cache_dir: Path | None = None, progress: Progress = silent) -> TrainResult:
    """Train ``run.method`` and record every step to ``run.path``; returns the final evaluation and gates.

    Raises :class:`WsError` when ``on_nan = "stop"`` meets a non-finite loss or gradient (the recording is then
    closed with status ``failed``); any other exception also leaves a ``failed`` recording.
    """
    from recorders.train.probes import watch

    cfg, method = run.cfg, run.method
    base = method.encode_classes(run.task.base_classnames)
    novel = method.encode_classes(run.task.novel_classnames)
    data = prepare_data(method, run.task, cfg, cache_dir, progress)
    optimizer = make_optimizer(method, cfg)
    tensors = {name: (p, tensor_stride(p, cfg.tensor_stride)) for name, p in method.strided_tensors().items()}
    probe = watch(
        method,
        optimizer,
        prompts=method.prompt_params(),
        loss_terms=loss_terms(method),
        tensors=tensors,
        regularisers=method.gate_regularisers,
        block=min(cfg.flush_every, 1024),
    )
    from recorders.train.probes import gate_set_name

    initial = gate_states(method)
    instance = tuple(gate_set_name(n) for n, g in find_gates(method).items() if g.kind == "instance")
    spec = EvalSpec(len(run.task.test_base), len(run.task.test_novel), counterfactual_kinds(method), instance)
    layout = replace(probe.layout, evaluation=spec)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    spe = steps_per_epoch(len(run.task.train), cfg.batch_size)
    total = cfg.epochs * spe
    scaler = torch.amp.GradScaler(method.backbone.device.type, enabled=method.backbone.autocast_dtype == torch.float16)
    before = None
    step = 0
    with RecordingWriter(
        run.path,
        layout,
        config=cfg.to_dict(),
        method=cfg.method,
        seed=cfg.seed,
        device=str(method.backbone.device),
        dataset=cfg.dataset,
        flush_every=cfg.flush_every,
        total_steps=total,
        overwrite=run.force,
        backbone_fingerprint=method.backbone.fingerprint,
    ) as writer:
        probe.attach(writer)
        method.train()
        if cfg.eval_at_start:
            before = evaluate(method, base, novel, data, cfg, initial)
            _add_eval(writer, 0, 0, before)
        for epoch in range(cfg.epochs):
            for inputs, labels in train_batches(data, method, cfg, epoch):
                lr = lr_at(step, cfg, spe)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                with method.backbone.autocast():
                    out = method(inputs, base)
                ce = F.cross_entropy(out.logits.float(), labels)
                losses = {"ce": ce, **{k: v.float() for k, v in out.terms.items()}}
                losses["total"] = torch.stack(list(losses.values())).sum()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["total"]).backward()
                scaler.unscale_(optimizer)
                probe.after_backward(step, epoch, lr, losses)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf)
                if not bool(torch.isfinite(norm) & torch.isfinite(losses["total"])):
                    _nonfinite(writer, cfg, step, losses["total"], scaler)
                else:
                    scaler.step(optimizer)
                    scaler.update()
                step += 1
                if step % 25 == 0 or step == total:  # the loss is read (a device sync) every 25 steps only
                    progress("train", step, total, loss=losses["total"].item())
                else:
                    progress("train", step, total)
            after = evaluate(method, base, novel, data, cfg, initial)
            _add_eval(writer, step, epoch + 1, after)
            writer.add_event(step, "epoch_end", f"epoch {epoch + 1}: base {after.base:.4f} novel {after.novel:.4f}")
        summary = gate_summary(method)  # instance gates: from the last step's captured logits, before close
        probe.close()
    return TrainResult(run.path, step, before, after, summary, method.groups())


def _add_eval(writer: RecordingWriter, step: int, epoch: int, ev: Evaluation) -> None:
    from recorders.train.probes import gate_set_name

    stats = {gate_set_name(name): values for name, values in ev.gate_stats.items()}
    writer.add_eval(step, epoch, ev.base, ev.novel, val_acc=ev.val, correct=ev.correct, gate_stats=stats)


def _nonfinite(
    writer: RecordingWriter, cfg: Config, step: int, loss: torch.Tensor, scaler: torch.amp.GradScaler
) -> None:
    """Record a non-finite step; under fp16 the grad scaler's overflow is routine, otherwise obey ``on_nan``."""
    what = "loss" if not bool(torch.isfinite(loss)) else "gradient"
    overflow = scaler.is_enabled() and what == "gradient"
    action = "skipped (fp16 overflow)" if overflow else ("skipped" if cfg.on_nan == "skip" else "run stopped")
    writer.add_event(step, "nonfinite", f"non-finite {what} at step {step}; {action}")
    if overflow:
        scaler.update()
        return
    if cfg.on_nan == "stop":
        raise WsError(
            f"non-finite {what} at step {step}: the run stopped (status failed); lower --lr, "
            "add --clip-grad 1.0, or pass --on-nan skip"
        )


def describe(cfg: Config, backbone: Backbone) -> list[ParamGroup]:
    """Trainable groups of ``cfg``'s method on ``backbone`` (for ``--dry-run``)."""
    seed_everything(cfg.seed)
    return build_method(cfg, backbone).groups()


def variant_counterpart(cfg: Config, variant: str) -> Config:
    """The same config under another ``variant`` (``--dry-run`` prints every variant's count side by side), without
    the gate interventions that variant refuses."""
    if variant == cfg.variant:
        return cfg
    if variant == "standard":
        return replace(cfg, variant=variant)
    entropy = 0.0 if variant == "param-matched" else cfg.gate_entropy
    return replace(
        cfg, variant=variant, grad_equilibrium=False, gate_lr_scale=1.0, gate_weight_decay=None, gate_entropy=entropy
    )
