"""Speed of the methods: step time, batched vs looped CoCoOp, cost of full per-step recording.

    python benchmarks/methods.py [--backbone builtin|DIR] [--steps 20] [--device cpu|cuda] [--methods a,b]
                                 [--sections 1,2,3] [--threads N] [--cpu-time]

1. Step time (forward + backward + SGD step) of every method (or of ``--methods``) at its preset batch size on the
   backbone, with the 18 base classes of the built-in world (feature methods get random cached-style features, the
   MaPLe family random pixels); ``adaptive-bimaple`` also under ``--variant param-matched`` and ``always-frozen``.
2. CoCoOp at batch 8: our text forward (B × C prompts at once, the shared start-and-context prefix run once per
   image) against batching alone, a per-image loop, and the reference's per-image loop over full-length prompts;
   prints the speed-ups (target >= 5x over the reference) and the loss differences (target <= 1e-5).
3. ``adaptive-bimaple``: median step time with every per-step series recorded (probe + writer) over without,
   alternating (target <= 1.05), and the share of a recorded step spent in ``Probe.after_backward`` (flushes
   included), which a shared machine's noise disturbs less than the ratio of two medians.
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
from recorders.methods.registry import METHODS, build_method
from recorders.train.config import build_config
from recorders.train.loop import loss_terms, make_optimizer
from recorders.train.probes import watch

WORLD_BASE = 18
CLOCK = time.perf_counter  # --cpu-time: time.process_time (this process's CPU seconds, steadier on a shared machine)


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

    def __init__(
        self, backbone: Backbone, name: str, classnames: list[str], batch: int | None = None, variant: str = "standard"
    ) -> None:
        cfg = build_config([("method", name), ("variant", variant)])
        self.cfg = cfg if batch is None else replace(cfg, batch_size=batch)
        self.backbone = backbone
        self.method = build_method(self.cfg, backbone)
        self.classes = self.method.encode_classes(classnames)
        self.x, self.y = _batch(self.method, backbone, self.cfg.batch_size, len(classnames))
        self.optimizer = make_optimizer(self.method, self.cfg)
        self.n = 0
        self.probe_seconds = 0.0  # host time spent in Probe.after_backward (flushes included)

    def step(self, probe=None) -> None:
        with self.backbone.autocast():
            out = self.method(self.x, self.classes)
        losses = {"ce": F.cross_entropy(out.logits.float(), self.y), **out.terms}
        losses["total"] = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if probe is not None:
            start = CLOCK()
            probe.after_backward(self.n, 0, self.cfg.lr, losses)
            self.probe_seconds += CLOCK() - start
        self.optimizer.step()
        self.n += 1

    def seconds_per_step(self, steps: int, probe=None) -> float:
        self.step(probe)  # warm-up
        _sync(self.backbone.device)
        start = CLOCK()
        for _ in range(steps):
            self.step(probe)
        _sync(self.backbone.device)
        return (CLOCK() - start) / steps


def step_times(
    backbone: Backbone, classnames: list[str], steps: int, repeats: int = 1, methods: tuple[str, ...] = METHODS
) -> None:
    """Median seconds/step over ``repeats`` rounds of ``steps`` steps, round-robin across the methods, so a shared
    machine's slow spells hit every method alike."""
    print(f"1. step time per method ({len(classnames)} classes, preset batch sizes, {backbone.device})")
    runs = [(name, "standard") for name in methods]
    if "adaptive-bimaple" in methods:
        runs += [("adaptive-bimaple", "param-matched"), ("adaptive-bimaple", "always-frozen")]
    steppers = {run: Stepper(backbone, run[0], classnames, variant=run[1]) for run in runs}
    samples: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
    for _ in range(repeats):
        for run, s in steppers.items():
            samples[run].append(s.seconds_per_step(steps))
    for (name, variant), s in steppers.items():
        t = statistics.median(samples[(name, variant)])
        label = name if variant == "standard" else f"{name} {variant}"
        print(
            f"   {label:<31} batch {s.cfg.batch_size:>3}: {t * 1e3:8.1f} ms/step  "
            f"({s.method.n_trainable():,} trainable)"
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
) -> tuple[float, float, float, float]:
    """Median seconds/step without and with full recording, their ratio (alternating runs), and the share of the
    recorded steps' time spent in ``Probe.after_backward`` (steadier than the ratio on a shared machine)."""
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
    per_call = s.probe_seconds / (repeats * (steps + 1))  # seconds_per_step runs one untimed warm-up step too
    return a, b, b / a, per_call / b


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
    return Backbone.of(
        model,
        tokenizer=tokenizer,
        name="random-vit-b16",
        fingerprint="random",
        device=device,
        autocast_dtype=torch.bfloat16,
        image_mean=(0.48145466, 0.4578275, 0.40821073),
        image_std=(0.26862954, 0.26130258, 0.27577711),
    )


def gpu_section(device: torch.device) -> None:
    backbone = vit_b16(device)
    classnames = [f"class{i}" for i in range(100)]
    print("4. random-init ViT-B/16, 100 classes, bf16, 50 steps")
    for name in ("coop-gating", "cocoop-gating", "adaptive-bimaple"):
        torch.cuda.reset_peak_memory_stats(device)
        a, b, ratio, _ = recording_overhead(backbone, classnames, name, steps=50, repeats=1)
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
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods for section 1")
    parser.add_argument("--sections", default="1,2,3", help="comma-separated sections to run (1, 2, 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time sections 1 and 3 in process CPU seconds (shared machines)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    sections = {s.strip() for s in args.sections.split(",")}
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone, args.device)
    from recorders.data.world import load_world

    classnames = load_world().classnames[:WORLD_BASE]
    if "1" in sections:
        step_times(backbone, classnames, args.steps, max(1, args.repeats // 3), methods)
    if "2" in sections:
        cocoop_batched_vs_loop(backbone, classnames, args.repeats)
    if "3" in sections:
        a, b, ratio, share = recording_overhead(backbone, classnames, "adaptive-bimaple", args.steps, args.repeats)
        print(
            f"3. adaptive-bimaple full recording: {a * 1e3:.1f} → {b * 1e3:.1f} ms/step, ratio {ratio:.3f} "
            f"(target <= 1.05); Probe.after_backward takes {share:.1%} of a recorded step"
        )
    if backbone.device.type == "cuda":
        gpu_section(backbone.device)


if __name__ == "__main__":
    main()
