"""Speed of the methods: step time, batched vs looped CoCoOp, cost of full per-step recording.

    python benchmarks/methods.py [--backbone builtin|DIR] [--steps 20] [--device cpu|cuda]

1. Step time (forward + backward + SGD step) of every method at its preset batch size on the backbone, with
   the 18 base classes of the built-in world (feature methods get random cached-style features, the MaPLe family
   random pixels).
2. CoCoOp at batch 8: our text forward (B × C prompts at once, the shared start-and-context prefix run once per
   image) against batching alone, a per-image loop, and the reference's per-image loop over full-length prompts;
   prints the speed-ups (target >= 5x over the reference) and the loss differences (target <= 1e-5).
3. ``adaptive-bimaple``: median step time with every per-step series recorded (probe + writer) over without,
   alternating (target <= 1.05).
4. With ``--device cuda``: a random-init ViT-B/16 CLIP with 100 classes, 50 steps of ``coop-gating``,
   ``cocoop-gating`` and ``adaptive-bimaple`` in bf16: step time, peak memory, recording overhead ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from recorders.clip.backbone import Backbone, load_backbone
from recorders.format import RecordingWriter
from recorders.methods.gates import find_gates
from recorders.methods.registry import build_method
from recorders.train.config import METHODS, build_config
from recorders.train.loop import loss_terms, make_optimizer
from recorders.train.probes import watch

WORLD_BASE = 18


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(method, backbone: Backbone, batch: int, n_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if method.needs_pixels:
        x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=g)
    else:
        x = torch.randn(batch, backbone.embed_dim, generator=g)
    return x.to(backbone.device), torch.randint(n_classes, (batch,), generator=g).to(backbone.device)


class Stepper:
    """One method, one fixed batch, one optimiser; ``step(probe)`` runs a full training step."""

    def __init__(self, backbone: Backbone, name: str, classnames: list[str], batch: int | None = None) -> None:
        cfg = build_config([("method", name)])
        self.cfg = cfg if batch is None else replace(cfg, batch_size=batch)
        self.backbone = backbone
        self.method = build_method(self.cfg, backbone)
        self.classes = self.method.encode_classes(classnames)
        self.x, self.y = _batch(self.method, backbone, self.cfg.batch_size, len(classnames))
        self.optimizer = make_optimizer(self.method, self.cfg)
        self.n = 0

    def step(self, probe=None) -> None:
        with self.backbone.autocast():
            out = self.method(self.x, self.classes)
        losses = {"ce": F.cross_entropy(out.logits.float(), self.y), **out.terms}
        losses["total"] = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if probe is not None:
            probe.after_backward(self.n, 0, self.cfg.lr, losses)
        self.optimizer.step()
        self.n += 1

    def seconds_per_step(self, steps: int, probe=None) -> float:
        self.step(probe)  # warm-up
        _sync(self.backbone.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(probe)
        _sync(self.backbone.device)
        return (time.perf_counter() - start) / steps


def step_times(backbone: Backbone, classnames: list[str], steps: int) -> None:
    print(f"1. step time per method ({len(classnames)} classes, preset batch sizes, {backbone.device})")
    for name in METHODS:
        s = Stepper(backbone, name, classnames)
        t = s.seconds_per_step(steps)
        print(
            f"   {name:<17} batch {s.cfg.batch_size:>3}: {t * 1e3:8.1f} ms/step  ({s.method.n_trainable():,} trainable)"
        )


def cocoop_batched_vs_loop(backbone: Backbone, classnames: list[str], repeats: int) -> None:
    """CoCoOp's text side at batch 8, forward + backward, four ways: ours (one batched forward over a shared prefix,
    ``PromptMethod.text_features``), batching alone (the B·C spliced prompts in one plain text forward), a loop over
    images on our cut prompts, and the reference formulation (a loop over images, one plain text forward of the C
    prompts padded to the model's full context length per image, as in CoCoOp's code)."""
    from recorders.clip.encoders import text_features, token_embeddings
    from recorders.methods.base import ClassPrompts

    s = Stepper(backbone, "cocoop", classnames, batch=8)
    m, classes, model = s.method, s.classes, backbone.model
    ids = backbone.tokenize([f"{m.cfg.ctx_init} {name}." for name in classnames])
    with torch.no_grad():
        full = ClassPrompts(list(classnames), ids, token_embeddings(model, ids))

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, s.y)

    def image_and_context() -> tuple[torch.Tensor, torch.Tensor]:
        image = F.normalize(s.x.float(), dim=-1)
        return image, m.instance_context(image)[0]

    def ours() -> torch.Tensor:
        return loss(m(s.x, classes).logits)

    def batched_plain() -> torch.Tensor:  # B·C full sequences through the plain text forward at once
        image, ctx = image_and_context()
        text = F.normalize(text_features(model, m.splice(classes, ctx), classes.input_ids.repeat(len(ctx), 1)), dim=-1)
        return loss(m.logit_scale() * torch.einsum("be,bce->bc", image, text.view(len(ctx), len(classes), -1)))

    def looped(prompts: ClassPrompts) -> torch.Tensor:  # a Python loop, one plain text forward per image
        image, ctx = image_and_context()
        logits = [
            m.logit_scale()
            * image[b]
            @ F.normalize(text_features(model, m.splice(prompts, ctx[b]), prompts.input_ids), dim=-1).T
            for b in range(len(image))
        ]
        return loss(torch.stack(logits))

    variants = {
        "ours": ours,
        "batched": batched_plain,
        "loop": lambda: looped(classes),
        "reference": lambda: looped(full),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    losses = {name: float(fn().detach()) for name, fn in variants.items()}
    for _ in range(repeats):  # round-robin, so a shared machine's slow spells hit every variant alike
        for name, fn in variants.items():
            _sync(backbone.device)
            start = time.perf_counter()
            fn().backward()
            _sync(backbone.device)
            samples[name].append(time.perf_counter() - start)
    times = {name: statistics.median(values) for name, values in samples.items()}
    print(
        f"2. CoCoOp at batch 8, {len(classes)} classes, forward + backward ({classes.input_ids.shape[1]} prompt "
        f"tokens after the cut, {ids.shape[1]} in full, {1 + m.n_ctx} shared)"
    )
    print(f"   ours (batched, shared prefix): {times['ours'] * 1e3:.1f} ms")
    for name, label in (
        ("batched", "batched, plain forward of B·C prompts"),
        ("loop", "per-image loop, cut prompts"),
        ("reference", "reference (per-image loop, full length)"),
    ):
        target = " (target >= 5x)" if name == "reference" else ""
        print(
            f"   {label}: {times[name] * 1e3:.1f} ms -> ours is {times[name] / times['ours']:.1f}x faster{target}; "
            f"|loss difference| {abs(losses['ours'] - losses[name]):.2e} (target <= 1e-5)"
        )


def recording_overhead(
    backbone: Backbone, classnames: list[str], name: str, steps: int, repeats: int
) -> tuple[float, float, float]:
    """Median seconds/step without and with full recording, and their ratio (alternating runs)."""
    s = Stepper(backbone, name, classnames)
    tensors = {k: (p, 50) for k, p in s.method.strided_tensors().items()}
    probe = watch(
        s.method,
        s.optimizer,
        prompts=s.method.prompt_params(),
        loss_terms=loss_terms(s.method),
        tensors=tensors,
        regularisers=s.method.gate_regularisers,
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        RecordingWriter(
            Path(tmp) / "bench.h5",
            probe.layout,
            config=s.cfg.to_dict(),
            method=name,
            seed=0,
            device=str(backbone.device),
        ) as writer,
    ):
        probe.attach(writer)
        gates = [(g, g.capture) for g in find_gates(s.method).values()]  # capture is part of recording
        plain, recorded = [], []
        for _ in range(repeats):
            for g, _on in gates:
                g.capture = False
            plain.append(s.seconds_per_step(steps))
            for g, on in gates:
                g.capture = on
            recorded.append(s.seconds_per_step(steps, probe))
        probe.close()
    a, b = statistics.median(plain), statistics.median(recorded)
    return a, b, b / a


def vit_b16(device: torch.device) -> Backbone:
    """A random-init CLIP ViT-B/16 (transformers' default CLIPConfig with patch 16) on ``device``, bf16 autocast."""
    from transformers import CLIPConfig, CLIPModel

    from recorders.clip.tokenizer import build_tokenizer

    words = [f"class{i}" for i in range(100)]
    tokenizer = build_tokenizer(["a", "photo", "of", *words], 77)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.eos_token_id,
        },
        vision_config={"patch_size": 16, "image_size": 224},
        projection_dim=512,
    )
    model = CLIPModel(config).eval().requires_grad_(False).to(device)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        name="random-vit-b16",
        fingerprint="random",
        device=device,
        autocast_dtype=torch.bfloat16,
        image_size=224,
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
        text_width=512,
        vision_width=768,
        embed_dim=512,
        context_length=77,
    )


def gpu_section(device: torch.device) -> None:
    backbone = vit_b16(device)
    classnames = [f"class{i}" for i in range(100)]
    print("4. random-init ViT-B/16, 100 classes, bf16, 50 steps")
    for name in ("coop-gating", "cocoop-gating", "adaptive-bimaple"):
        torch.cuda.reset_peak_memory_stats(device)
        a, b, ratio = recording_overhead(backbone, classnames, name, steps=50, repeats=1)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(
            f"   {name:<17}: {a * 1e3:.1f} ms/step plain, {b * 1e3:.1f} ms/step recorded, ratio {ratio:.3f}, "
            f"peak {peak:.2f} GiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="builtin")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone, args.device)
    from recorders.data.world import load_world

    classnames = load_world().classnames[:WORLD_BASE]
    step_times(backbone, classnames, args.steps)
    cocoop_batched_vs_loop(backbone, classnames, args.repeats)
    a, b, ratio = recording_overhead(backbone, classnames, "adaptive-bimaple", args.steps, args.repeats)
    print(
        f"3. adaptive-bimaple full recording: {a * 1e3:.1f} → {b * 1e3:.1f} ms/step, ratio {ratio:.3f} (target <= 1.05)"
    )
    if backbone.device.type == "cuda":
        gpu_section(backbone.device)


if __name__ == "__main__":
    main()
