"""Frozen CLIP backbones: the built-in tiny CLIP, a local Hugging Face checkpoint directory, or a cached hub id.

All three go through the same loader (:func:`load_backbone`): ``CLIPModel.from_pretrained(dir,
local_files_only=True)`` plus the directory's CLIP tokenizer and image mean/std. Nothing is ever downloaded: a hub id
must already be in the local Hugging Face cache. The returned model is frozen (``requires_grad`` False everywhere,
``eval()``), kept in float32, and runs under bf16 autocast on CUDA (fp16 where bf16 is unsupported).

The built-in checkpoint is built on first use by :mod:`recorders.clip.pretrain` into ``$WS_CACHE/backbones/`` (default
``~/.cache/ws/backbones/``) and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers

from recorders.format.errors import ConfigError, DataError
from recorders.paths import backbones_dir

# CLIP's own normalisation, used when a checkpoint directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VALID_FORMS = (
    "'builtin'",
    "a local checkpoint directory (config.json + model.safetensors + tokenizer files)",
    "a hub id already in the local Hugging Face cache, e.g. openai/clip-vit-base-patch16",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Backbone:
    """A frozen CLIP model with its tokenizer and preprocessing constants.

    ``fingerprint`` is a stable hex id of the weights and config (for cache keys). Widths come from the config:
    ``text_width``/``vision_width`` are the encoders' hidden sizes, ``embed_dim`` the projection size, and
    ``context_length`` the text encoder's number of positions.
    """

    model: transformers.CLIPModel
    tokenizer: Any
    name: str
    fingerprint: str
    device: torch.device
    autocast_dtype: torch.dtype | None
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    text_width: int
    vision_width: int
    embed_dim: int
    context_length: int

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``(N, context_length)`` int64 on ``device``: BOS, tokens, EOT, then padding (truncated to fit,
        keeping EOT)."""
        ids = self.tokenizer(
            list(texts), padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )["input_ids"]
        return ids.to(device=self.device, dtype=torch.int64)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in ``autocast_dtype`` on CUDA; a no-op context on CPU (float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything else → ConfigError."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise ConfigError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available: use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {spec!r} does not exist ({torch.cuda.device_count()} CUDA device(s)): "
            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def clip_configs(model: transformers.CLIPModel) -> tuple[transformers.CLIPTextConfig, transformers.CLIPVisionConfig]:
    """The text and vision sub-configs of a loaded CLIP (typed: transformers declares them loosely)."""
    return (
        cast(transformers.CLIPTextConfig, model.config.text_config),
        cast(transformers.CLIPVisionConfig, model.config.vision_config),
    )


def image_size(model: transformers.CLIPModel) -> int:
    """The vision tower's square input side in pixels (ws supports square inputs only)."""
    size = clip_configs(model)[1].image_size
    if not isinstance(size, int):
        raise DataError(f"vision_config.image_size = {size!r}: ws needs one integer (square images)")
    return size


def builtin_dir() -> Path:
    """The built-in tiny CLIP's checkpoint directory (versioned by the pretraining recipe)."""
    from recorders.clip.pretrain import RECIPE_VERSION

    return backbones_dir() / f"builtin-{RECIPE_VERSION}"


def load_backbone(spec: str = "builtin", device: str = "auto") -> Backbone:
    """Load a frozen CLIP backbone.

    ``spec`` is ``"builtin"`` (built on first use, then cached), a checkpoint directory, or a hub id resolved from
    the local Hugging Face cache only. A missing or invalid spec raises DataError listing the valid forms.
    """
    torch_device = resolve_device(device)
    if spec == "builtin":
        directory = builtin_dir()
        if not (directory / "config.json").is_file():
            from recorders.clip.pretrain import build_builtin

            build_builtin(directory)
    elif spec.strip() and Path(spec).expanduser().exists():
        directory = Path(spec).expanduser()
        if not (directory / "config.json").is_file():
            raise DataError(
                f"backbone directory {directory} has no config.json: pass a Hugging Face CLIP "
                f"checkpoint directory (e.g. one saved by `ws backbone pretrain --out DIR`)"
            )
    elif _HUB_ID.match(spec):
        directory = _hub_snapshot(spec)
    else:
        raise DataError(f"unknown backbone {spec!r}: use one of {'; '.join(VALID_FORMS)}")
    return _load_directory(directory, spec, torch_device)


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of a cached hub repository; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise DataError(
            f"backbone {repo_id!r} is not in the local Hugging Face cache and ws never downloads: "
            f"fetch it once with `huggingface-cli download {repo_id}` (or pass a checkpoint "
            f"directory)"
        ) from None


def _load_directory(directory: Path, name: str, device: torch.device) -> Backbone:
    """Load model, tokenizer and preprocessing constants from a checkpoint directory, frozen, onto ``device``."""
    try:
        model = transformers.CLIPModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load a CLIP checkpoint from {directory} ({first_line}): pass a directory with a "
            f"CLIP config.json, model.safetensors and CLIP tokenizer files"
        ) from None
    model.requires_grad_(False)
    model.eval()
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
    mean, std = _normalisation(directory)
    autocast_dtype = None
    if device.type == "cuda":
        autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    text_config, vision_config = clip_configs(model)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        name=name,
        fingerprint=fingerprint(directory),
        device=device,
        autocast_dtype=autocast_dtype,
        image_size=image_size(model),
        image_mean=mean,
        image_std=std,
        text_width=text_config.hidden_size,
        vision_width=vision_config.hidden_size,
        embed_dim=cast(int, model.config.projection_dim),
        context_length=text_config.max_position_embeddings,
    )


def _normalisation(directory: Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) from ``preprocessor_config.json``, falling back to CLIP's constants. The image size
    is the model's own (``vision_config.image_size``): pixels of any other size are rejected by CLIP."""
    path = directory / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    mean = config.get("image_mean", CLIP_MEAN)
    std = config.get("image_std", CLIP_STD)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def fingerprint(directory: Path) -> str:
    """SHA-256 (first 16 hex digits) over config.json and every weights file in ``directory``."""
    digest = hashlib.sha256()
    files = [directory / "config.json", *sorted(directory.glob("*.safetensors")), *sorted(directory.glob("*.bin"))]
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]
