"""The built-in tiny CLIP: a small ``transformers.CLIPModel`` pretrained contrastively on the built-in world.

The recipe is deterministic for a given seed and step count on one machine. It first renders a bank of
:data:`BANK_IMAGES` scenes per (seen composition, domain) (:data:`recorders.data.world.SEEN` × all five domains, 7200
images), then each step draws a batch from the bank (randomly mirrored) and scores it against one caption per
(composition, domain) — 150 captions, each with a random template — so every image meets every other class as a
negative, not only the few that share its batch (with 64 images from 150 classes, in-batch negatives rarely differ
from an image in shape alone, and the model learned colour but not shape). The loss is CLIP's symmetric
contrastive loss (:func:`contrastive_loss`), AdamW with warm-up and a cosine schedule.
The checkpoint is saved in the Hugging Face layout (``config.json``,
``model.safetensors``, tokenizer files, ``preprocessor_config.json``) plus ``metrics.json`` (zero-shot accuracy on
seen and held-out compositions), so :func:`recorders.clip.backbone.load_backbone` loads it like any CLIP checkpoint.
The package ships one checkpoint made by this recipe (``recorders/clip/builtin/``): the same numbers on every machine.
Rebuilding gives zero-shot metrics within a small tolerance of the shipped ones, not identical weights (float
reductions differ across CPUs and thread counts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from recorders.clip.backbone import image_size
from recorders.clip.constants import CLIP_MEAN, CLIP_STD, RECIPE_VERSION
from recorders.clip.encoders import image_features, text_features, token_embeddings
from recorders.clip.tokenizer import build_tokenizer
from recorders.data.world import (
    CLASSES,
    DOMAINS,
    DOWNSTREAM_DOMAIN,
    HELD_OUT,
    SEEN,
    TEMPLATES,
    Scene,
    render,
    sample_scene,
)
from recorders.progress import Progress, silent

IMAGE_SIZE = 24  # shapes fill the frame (recorders.data.world.sample_scene), so 24 px keep them legible
PATCH_SIZE = 4  # 6×6 patches: at 4×4 patches (32 px, patch 8) the tiny ViT learned colour but hardly any shape
CONTEXT_LENGTH = 24
DEFAULT_STEPS = 600
BATCH_SIZE = 128  # twice v2's 64: at 24 px a step is cheap, and shape is learned far sooner per step
BANK_IMAGES = 48  # pre-rendered images per seen composition and domain (rendering would cost ~25% of a step)
LEARNING_RATE = 5e-3
WARMUP_STEPS = 30
EVAL_IMAGES = 8  # per composition and domain


def world_tokenizer() -> CLIPTokenizer:
    """The CLIP BPE tokenizer for the world's words (each one token), context length :data:`CONTEXT_LENGTH`."""
    from recorders.data.world import WORDS

    return build_tokenizer(WORDS, CONTEXT_LENGTH)


def tiny_config(tokenizer: CLIPTokenizer) -> CLIPConfig:
    """The tiny CLIP's config (~0.33M parameters): text width 96, 2 layers; vision width 64 (unequal to the text
    width on purpose, like 512/768 in ViT-B/16), 3 layers, patch 4 on 24 px images; MLPs 2× wide; 64-d joint
    space; the tokenizer's vocabulary with EOT as the largest id. A 128-image step costs ~0.15 s of one CPU core."""
    eot, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    return CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT_LENGTH,
            eos_token_id=eot,
            bos_token_id=bos,
            pad_token_id=eot,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
        ),
        projection_dim=64,
    )


def save_checkpoint(model: CLIPModel, tokenizer: CLIPTokenizer, out: Path, metrics: dict | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` in the Hugging Face layout, with CLIP's mean/std in
    ``preprocessor_config.json`` and ``metrics`` (if given) in ``metrics.json``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = image_size(model)
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "crop_size": {"height": size, "width": size},
        "size": {"shortest_edge": size},
        "resample": 3,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def random_checkpoint(out: Path, seed: int = 0) -> Path:
    """A random-init tiny CLIP with the world tokenizer saved at ``out`` (no training; for fast tests)."""
    tokenizer = world_tokenizer()
    torch.manual_seed(seed)
    return save_checkpoint(CLIPModel(tiny_config(tokenizer)).eval(), tokenizer, out)


def pixels(images: list, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """PIL images of side ``size`` → normalised float tensor ``(B, 3, size, size)``."""
    array: np.ndarray = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 255.0
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def encode_texts(model: CLIPModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """L2-normalised text features ``(N, embed_dim)``, padded to the longest text only."""
    ids = tokenizer(texts, padding="longest", return_tensors="pt")["input_ids"]
    return F.normalize(text_features(model, token_embeddings(model, ids), ids), dim=-1)


def encode_scenes(model: CLIPModel, scenes: list[Scene]) -> torch.Tensor:
    """L2-normalised image features ``(N, embed_dim)`` of rendered scenes."""
    size = image_size(model)
    return F.normalize(
        image_features(model, pixels([render(s, size) for s in scenes], size, CLIP_MEAN, CLIP_STD)), dim=-1
    )


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, target: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric loss against a full caption set. ``image`` ``(B, D)`` and ``text`` ``(C, D)`` are
    normalised features, ``target`` ``(B,)`` the index of each image's caption. Image→text is a C-way cross-entropy
    (every other caption is a negative, not only those that happen to be in the batch); text→image is, for each
    caption with an image in the batch, a cross-entropy spread evenly over all its images."""
    logits = scale * image @ text.T
    match = (torch.arange(text.shape[0])[:, None] == target[None, :]).float()
    present = match.sum(dim=1) > 0
    to_image = F.cross_entropy(logits.T[present], match[present] / match[present].sum(dim=1, keepdim=True))
    return (F.cross_entropy(logits, target) + to_image) / 2


def render_bank(per_pair: int, size: int, rng: np.random.Generator) -> tuple[list[Scene], torch.Tensor]:
    """``per_pair`` random scenes of every (seen composition, domain), in that order, and their normalised pixels
    ``(30·5·per_pair, 3, size, size)``."""
    scenes = [sample_scene(name, domain, rng) for name in SEEN for domain in DOMAINS for _ in range(per_pair)]
    return scenes, pixels([render(scene, size) for scene in scenes], size, CLIP_MEAN, CLIP_STD)


def zero_shot(
    model: CLIPModel, tokenizer: CLIPTokenizer, images_per_class: int = EVAL_IMAGES, seed: int = 12345
) -> dict[str, float]:
    """Zero-shot accuracy, 36-way over all compositions with the matching domain's prompt
    ("a {domain} of a {class}."), averaged over domains: ``seen`` and ``held_out``; and in the downstream domain
    with the generic prompt "a photo of a {class}." (``downstream_generic``) vs the matching one
    (``downstream_matched``). ``images_per_class`` images per composition and domain."""
    rng = np.random.default_rng(seed)
    classes = list(CLASSES)
    correct: dict[str, list[bool]] = {"seen": [], "held_out": [], "downstream_generic": [], "downstream_matched": []}
    with torch.no_grad():
        generic = encode_texts(model, tokenizer, [f"a photo of a {c}." for c in classes])
        for domain, phrase in DOMAINS.items():
            prompts = encode_texts(model, tokenizer, [f"a {phrase} of a {c}." for c in classes])
            scenes = [sample_scene(c, domain, rng) for c in classes for _ in range(images_per_class)]
            truth = np.repeat(np.arange(len(classes)), images_per_class)
            images = encode_scenes(model, scenes)
            hits = (images @ prompts.T).argmax(dim=1).numpy() == truth
            for hit, scene in zip(hits, scenes, strict=True):
                correct["held_out" if scene.classname in HELD_OUT else "seen"].append(bool(hit))
            if domain == DOWNSTREAM_DOMAIN:
                correct["downstream_matched"] = list(hits)
                correct["downstream_generic"] = list((images @ generic.T).argmax(dim=1).numpy() == truth)
    return {name: float(np.mean(hits)) for name, hits in correct.items()}


def pretrain(
    out: Path,
    *,
    steps: int = DEFAULT_STEPS,
    seconds: float | None = None,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    eval_images: int = EVAL_IMAGES,
    progress: Progress = silent,
) -> dict:
    """Pretrain the tiny CLIP for ``steps`` steps (stopping early after ``seconds`` if given), save it at ``out``
    and return its metrics (zero-shot accuracies, steps done, seconds, parameter count, checkpoint bytes)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = world_tokenizer()
    model = CLIPModel(tiny_config(tokenizer))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / WARMUP_STEPS) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    pairs = [(name, domain) for name in SEEN for domain in DOMAINS]  # caption index = bank index // per_pair
    per_pair = min(BANK_IMAGES, -(-steps * batch_size // len(pairs)))  # never more than the run can draw
    start = time.perf_counter()
    _, bank = render_bank(per_pair, IMAGE_SIZE, rng)
    done = 0
    for step in range(steps):
        index = torch.from_numpy(rng.integers(len(bank), size=batch_size))
        flip = torch.from_numpy(rng.random(batch_size) < 0.5)[:, None, None, None]
        images = torch.where(flip, bank[index].flip(-1), bank[index])  # mirror images: the classes are too
        templates = rng.integers(len(TEMPLATES), size=len(pairs))
        texts = [
            TEMPLATES[t].format(domain=DOMAINS[domain], cls=name)
            for t, (name, domain) in zip(templates, pairs, strict=True)
        ]
        loss = contrastive_loss(
            F.normalize(image_features(model, images), dim=-1),
            encode_texts(model, tokenizer, texts),
            index // per_pair,
            model.logit_scale.exp(),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, float(np.log(100)))
        done = step + 1
        if done % 25 == 0 or done == steps:  # the loss is read (a device sync) every 25 steps only
            progress("pretrain", done, steps, loss=loss.item())
        if seconds is not None and time.perf_counter() - start > seconds:
            break
    train_seconds = time.perf_counter() - start
    model.eval()
    metrics: dict = {
        "recipe": RECIPE_VERSION,
        "seed": seed,
        "steps": done,
        "planned_steps": steps,
        "batch_size": batch_size,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "held_out": list(HELD_OUT),
        "chance": 1 / len(CLASSES),
    }
    metrics["zero_shot"] = zero_shot(model, tokenizer, eval_images)
    save_checkpoint(model, tokenizer, out, metrics)
    metrics["checkpoint_bytes"] = sum(p.stat().st_size for p in out.iterdir())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
