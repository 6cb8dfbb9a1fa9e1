"""The synthetic demo: a tiny gated prompt learner trained on random data, recorded end to end.

It exercises the whole pipeline (probes → writer → reader → viewer) in seconds on a CPU, without a CLIP backbone
(tests and benchmarks use it). The task imitates base-to-novel prompt learning: a frozen "image encoder" maps random
inputs to features; a class's text feature is its frozen class embedding plus the sum of the gated context tokens;
the labels come from a teacher whose class embeddings are all shifted by one hidden vector, so the context can learn
the shift. Training sees the base half of the classes; evaluation reports base and novel accuracy of the model's own
predictions on held-out inputs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from recorders.format import RECORDINGS_DIR, RecordingWriter
from recorders.methods.gates import Gate
from recorders.train.probes import watch


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo task (features are ``dim``-dimensional, inputs ``in_dim``).

    The frozen encoder (``in_dim → hidden → dim``) dominates a step, as a frozen backbone does in prompt learning;
    at these sizes a step takes a few milliseconds on one CPU core.
    """

    in_dim: int = 256
    hidden: int = 1024
    dim: int = 32
    n_ctx: int = 4
    n_classes: int = 10  # the first half are base classes, the rest novel
    batch: int = 128
    lr: float = 0.05
    eval_every: int = 100
    n_eval: int = 1000


class DemoModel(nn.Module):
    """Frozen encoder, frozen class embeddings, learnable context ``ctx (n_ctx, dim)`` scaled by length gates and by
    instance-conditioned gates computed from the image feature.

    ``forward(x)``: x ``(B, in_dim)`` → logits ``(B, n_classes)``.
    """

    class_emb: torch.Tensor  # a buffer: frozen class embeddings (n_classes, dim)

    def __init__(self, cfg: DemoConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.dim))
        for p in self.encoder.parameters():
            p.requires_grad_(False)
            with torch.no_grad():
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=generator)
        self.register_buffer("class_emb", torch.randn(cfg.n_classes, cfg.dim, generator=generator))
        self.ctx = nn.Parameter(0.02 * torch.randn(cfg.n_ctx, cfg.dim, generator=generator))
        self.ctx_gates = Gate(cfg.n_ctx, "length", prompt="ctx", vector_dim=cfg.dim, generator=generator)
        self.instance_gates = Gate(cfg.n_ctx, "instance", feature_dim=cfg.dim, vector_dim=cfg.dim, generator=generator)
        self.logit_scale = 10.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, dim)
        tokens = self.ctx_gates.gated(self.ctx_gates(), self.ctx)  # (n_ctx, dim): C̃_i = σ(g_i)·C_i
        per_input = tokens.expand(len(f), *tokens.shape)  # the instance gates scale the gated tokens per input
        shift = self.instance_gates.gated(self.instance_gates(f), per_input).sum(1)  # (B, dim)
        text = F.normalize(self.class_emb[None] + shift[:, None], dim=-1)  # (B, n_classes, dim)
        return self.logit_scale * torch.einsum("bd,bcd->bc", f, text)


def _teacher_labels(model: DemoModel, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        text = F.normalize(model.class_emb + shift, dim=-1)
        return (model.features(x) @ text.T).argmax(-1)


def _accuracy(model: DemoModel, x: torch.Tensor, y: torch.Tensor, classes: slice) -> float:
    """Top-1 accuracy among ``classes`` on the inputs whose label is one of them (NaN when there are none)."""
    keep = (y >= classes.start) & (y < classes.stop)
    if not bool(keep.any()):
        return float("nan")
    with torch.no_grad():
        pred = model(x[keep])[:, classes].argmax(-1) + classes.start
    return float((pred == y[keep]).float().mean())


def demo_optimizer(model: DemoModel, cfg: DemoConfig) -> torch.optim.SGD:
    """SGD (momentum 0.9, weight decay 5e-4) with two named groups: ``prompt`` (the context) and ``gates``."""
    gate_params = [*model.ctx_gates.parameters(), *model.instance_gates.parameters()]
    return torch.optim.SGD(
        [
            {"params": [model.ctx], "name": "prompt", "role": "prompt"},
            {"params": gate_params, "name": "gates", "role": "gate"},
        ],
        lr=cfg.lr,
        momentum=0.9,
        weight_decay=5e-4,
    )


def default_path(seed: int) -> Path:
    """``recordings/demo-random-s<seed>-<YYYYmmdd-HHMMSS>.h5``."""
    return RECORDINGS_DIR / f"demo-random-s{seed}-{datetime.now():%Y%m%d-%H%M%S}.h5"


def run_demo(
    out: Path | None = None,
    *,
    steps: int = 300,
    seed: int = 0,
    device: str = "cpu",
    flush_every: int = 64,
    record: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train the demo model for ``steps`` SGD steps and record it to ``out`` (default :func:`default_path`).

    SGD with momentum 0.9 and weight decay 5e-4 on two named groups (``prompt``: the context, ``gates``: both gate
    sets), evaluation every 100 steps. Deterministic on CPU for a given seed. With ``record=False`` nothing is
    written (the benchmark's baseline) and the would-be path is returned. An existing ``out`` is refused unless
    ``overwrite``.
    """
    cfg = DemoConfig()
    path = Path(out) if out is not None else default_path(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DemoModel(cfg, generator).to(device)
    hidden_shift = torch.randn(cfg.dim, generator=generator).to(device)
    x_train = torch.randn(4096, cfg.in_dim, generator=generator).to(device)
    y_train = _teacher_labels(model, x_train, hidden_shift)
    base = slice(0, cfg.n_classes // 2)
    novel = slice(cfg.n_classes // 2, cfg.n_classes)
    is_base = y_train < base.stop
    x_train, y_train = x_train[is_base], y_train[is_base]
    x_eval = torch.randn(cfg.n_eval, cfg.in_dim, generator=generator).to(device)
    y_eval = _teacher_labels(model, x_eval, hidden_shift)
    optimizer = demo_optimizer(model, cfg)
    probe = watch(
        model,
        optimizer,
        prompts={"ctx": model.ctx},
        loss_terms=("total", "ce"),
        tensors={"ctx": (model.ctx, 10)},
        block=flush_every,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    config = {"demo": asdict(cfg), "steps": steps, "seed": seed, "device": device, "flush_every": flush_every}
    recording = (
        RecordingWriter(
            path,
            probe.layout,
            config=config,
            method="demo",
            dataset="random",
            seed=seed,
            device=device,
            flush_every=flush_every,
            total_steps=steps,
            overwrite=overwrite,
        )
        if record
        else nullcontext(None)
    )
    with recording as writer:
        if writer is not None:
            probe.attach(writer)
        batches = torch.randint(len(x_train), (steps, cfg.batch), generator=generator).to(device)
        for step in range(steps):
            epoch = step * cfg.batch // len(x_train)
            idx = batches[step]
            loss = F.cross_entropy(model(x_train[idx])[:, base], y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if writer is not None:
                probe.after_backward(step, epoch, float(schedule.get_last_lr()[0]), {"total": loss, "ce": loss})
            optimizer.step()
            schedule.step()
            if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
                accuracies = _accuracy(model, x_eval, y_eval, base), _accuracy(model, x_eval, y_eval, novel)
                if writer is not None:
                    writer.add_eval(step, epoch, *accuracies)
                    writer.add_event(step, "eval", f"evaluated {cfg.n_eval} held-out inputs")
        if writer is not None:
            probe.close()
    return path
