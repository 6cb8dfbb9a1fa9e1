"""Per-epoch time of a CoOp-style training step with and without the frozen-feature cache.

A CoOp step (4 learned context vectors spliced into "a photo of a {class}.", text encoder forward and
backward, cosine logits, cross-entropy, SGD) on the world's 16-shot base task. Without the cache each batch
is decoded, augmented and run through the frozen image encoder; with it, features are a table lookup. Target:
cached >= 5x faster. Also checks that cached features equal freshly recomputed ones.

    python benchmarks/feature_cache.py [--backbone builtin|DIR|random|vit-b16-random] [--epochs 3] [--views 4]

The default backbone is the built-in one when it is already built, else a random-init tiny CLIP (it says
which); ``vit-b16-random`` is a random-init CLIP of ViT-B/16 size (224 px, 12+12 layers) with the world's
tokenizer, to see the ratio at the scale the paper uses.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from recorders.clip.backbone import Backbone, load_backbone
from recorders.clip.encoders import image_features, text_features, token_embeddings
from recorders.clip.pretrain import CONTEXT_LENGTH, random_checkpoint, save_checkpoint, world_tokenizer
from recorders.data.datasets import load_dataset
from recorders.data.feature_cache import cached_features
from recorders.data.fewshot import base_to_novel
from recorders.data.transforms import load_batch, train_transform

N_CTX = 4
BATCH = 32


def pick_backbone(spec: str | None, device: str, scratch: Path) -> tuple[Backbone, str]:
    """The requested backbone, or the shipped builtin."""
    if spec is None:
        spec = "builtin"
    if spec == "random":
        return load_backbone(str(random_checkpoint(scratch / "random")), device), "random-init tiny CLIP"
    if spec == "vit-b16-random":
        tokenizer = world_tokenizer()
        eot = tokenizer.eos_token_id
        text = dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=CONTEXT_LENGTH,
            eos_token_id=eot,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=eot,
        )
        config = CLIPConfig(text_config=text, vision_config=dict(patch_size=16, image_size=224), projection_dim=512)
        torch.manual_seed(0)
        out = save_checkpoint(CLIPModel(config).eval(), tokenizer, scratch / "vit-b16")
        return load_backbone(str(out), device), "random-init ViT-B/16-size CLIP"
    return load_backbone(spec, device), spec


def make_step(backbone: Backbone, classnames: list[str]):
    """A CoOp step closure ``step(image_features (B, E), labels (B,)) -> loss``; the context is learned."""
    model = backbone.model
    ids = backbone.tokenize([f"a photo of a {name}." for name in classnames])
    with torch.no_grad():
        embeds = token_embeddings(model, ids)
    ctx = torch.nn.Parameter(embeds[0, 1 : 1 + N_CTX].clone())
    optimiser = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    scale = model.logit_scale.exp().detach()

    def step(feats: torch.Tensor, labels: torch.Tensor) -> float:
        prompts = torch.cat([embeds[:, :1], ctx.expand(len(classnames), -1, -1), embeds[:, 1 + N_CTX :]], 1)
        with backbone.autocast():
            text = text_features(model, prompts, ids)
            logits = scale * F.normalize(feats.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
            loss = F.cross_entropy(logits, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--views", type=int, default=4)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    backbone, which = pick_backbone(args.backbone, args.device, scratch)
    task = base_to_novel(load_dataset("world", None), shots=16, seed=1)
    items, load = task.train, task.dataset.load_image
    labels = torch.tensor([it.label for it in items], device=backbone.device)
    transform = train_transform(backbone.image_size, backbone.image_mean, backbone.image_std)
    print(f"backbone: {which} ({backbone.device}, image {backbone.image_size}px, embed {backbone.embed_dim})")
    print(f"task: world 16-shot base, {len(items)} images, {len(task.base_classnames)} classes, batch {BATCH}")

    t0 = time.perf_counter()
    common = dict(seed=1, cache_dir=scratch / "cache", dataset_fingerprint=task.dataset.fingerprint)
    table = cached_features(backbone, items, load, kind="train", views=args.views, **common)
    synchronise(backbone.device)
    print(f"cache build: {time.perf_counter() - t0:.2f} s for {len(items) * args.views} views")

    step = make_step(backbone, task.base_classnames)
    generator = torch.Generator().manual_seed(0)

    phases = {"load + augment": 0.0, "image encoder": 0.0}

    def epoch(cached: bool, index: int) -> float:
        order = torch.randperm(len(items), generator=generator)
        start = time.perf_counter()
        for b in range(0, len(items) - BATCH + 1, BATCH):
            batch = order[b : b + BATCH]
            if cached:
                feats = table[batch.to(table.device), index % args.views]
            else:
                t0 = time.perf_counter()
                rngs = [np.random.default_rng([1, index, int(i)]) for i in batch]
                pixels = load_batch([items[int(i)] for i in batch], load, transform, rngs).to(backbone.device)
                t1 = time.perf_counter()
                with torch.no_grad(), backbone.autocast():
                    feats = image_features(backbone.model, pixels)
                synchronise(backbone.device)
                phases["load + augment"] += t1 - t0
                phases["image encoder"] += time.perf_counter() - t1
            step(feats, labels[batch.to(labels.device)])
        synchronise(backbone.device)
        return time.perf_counter() - start

    results = {}
    for cached in (False, True):
        epoch(cached, 1000)  # warm-up
        if not cached:
            phases.update(dict.fromkeys(phases, 0.0))  # count the timed epochs only
        times = [epoch(cached, e) for e in range(args.epochs)]
        results[cached] = float(np.median(times))
        label = "with cache   " if cached else "without cache"
        print(f"{label}: {results[cached] * 1000:8.1f} ms/epoch (median of {args.epochs})")
    parts = ", ".join(f"{k} {v / args.epochs * 1000:.1f} ms" for k, v in phases.items() if v)
    print(f"  uncached epoch, mean per phase: {parts}; the rest is the text step")
    ratio = results[False] / results[True]
    print(f"speed-up: {ratio:.1f}x (target >= 5x) {'PASS' if ratio >= 5 else 'FAIL'}")

    check = list(range(0, len(items), max(1, len(items) // 8)))
    rngs = [np.random.default_rng([1, i, 2]) for i in check]
    pixels = load_batch([items[i] for i in check], load, transform, rngs).to(backbone.device)
    with torch.no_grad(), backbone.autocast():
        fresh = image_features(backbone.model, pixels).float()
    diff = (fresh - table[check, 2]).abs().max().item()
    scale = table.abs().max().item()
    tolerance = 1e-4 if backbone.device.type == "cpu" else 2e-2
    verdict = "PASS" if diff <= tolerance * max(1.0, scale) else "FAIL"
    print(f"cached vs recomputed (view 2 of {len(check)} images): max |diff| {diff:.2e} {verdict}")


if __name__ == "__main__":
    main()
