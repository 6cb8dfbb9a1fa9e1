"""Frozen CLIP backbones: the built-in tiny CLIP, a local Hugging Face checkpoint directory, or a cached hub id.

All three go through the same loader (:func:`load_backbone`): ``CLIPModel.from_pretrained(dir,
local_files_only=True)`` plus the directory's CLIP tokenizer and image mean/std. Nothing is ever downloaded: a hub id
must already be in the local Hugging Face cache. The returned model is frozen (``requires_grad`` False everywhere,
``eval()``), kept in float32, and runs under bf16 autocast on CUDA (fp16 where bf16 is unsupported).

The built-in checkpoint ships with the package (``recorders/clip/builtin/``, ~1.3 MB, built once by the recipe in
:mod:`recorders.clip.pretrain`), so every machine loads the same weights in well under a second and nothing is
pretrained at run time. ``ws backbone pretrain --out DIR`` rebuilds it by the recipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers

from recorders.clip.constants import CLIP_MEAN, CLIP_STD
from recorders.format.errors import ConfigError, DataError

# The shipped built-in checkpoint (package data) and the SHA-256 of its weights as shipped.
BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_SHA256 = "69ca27c79d02c5d76e79b83852643d52c27a534de141339800d4f2b2bd7aca58"
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

    @classmethod
    def of(
        cls,
        model: transformers.CLIPModel,
        *,
        tokenizer: Any,
        name: str,
        fingerprint: str,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        image_mean: tuple[float, float, float],
        image_std: tuple[float, float, float],
    ) -> Backbone:
        """A backbone around ``model`` whose image size and widths are read from the model's config."""
        text_config, vision_config = clip_configs(model)
        return cls(
            model=model,
            tokenizer=tokenizer,
            name=name,
            fingerprint=fingerprint,
            device=device,
            autocast_dtype=autocast_dtype,
            image_size=image_size(model),
            image_mean=image_mean,
            image_std=image_std,
            text_width=text_config.hidden_size,
            vision_width=vision_config.hidden_size,
            embed_dim=cast(int, model.config.projection_dim),
            context_length=text_config.max_position_embeddings,
        )

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


def vit_b16_config() -> transformers.CLIPConfig:
    """The shapes of OpenAI's CLIP ViT-B/16 (text 512 × 12 layers, 77 positions, 49,408 tokens; vision 768 × 12
    layers, patch 16 on 224 px; 512-d embeddings), for random-init models built without a download."""
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
        ),
        projection_dim=512,
    )


def image_size(model: transformers.CLIPModel) -> int:
    """The vision tower's square input side in pixels (ws supports square inputs only)."""
    size = clip_configs(model)[1].image_size
    if not isinstance(size, int):
        raise DataError(f"vision_config.image_size = {size!r}: ws needs one integer (square images)")
    return size


def load_backbone(spec: str = "builtin", device: str = "auto") -> Backbone:
    """Load a frozen CLIP backbone.

    ``spec`` is ``"builtin"`` (the checkpoint shipped in the package), a checkpoint directory, or a hub id resolved
    from the local Hugging Face cache only. A missing or invalid spec raises DataError listing the valid forms; a
    directory whose config, weights, tokenizer or preprocessor config cannot be loaded raises DataError naming it.
    """
    torch_device = resolve_device(device)
    if spec == "builtin":
        directory = BUILTIN_DIR
        if not (directory / "model.safetensors").is_file():
            raise DataError(
                f"the built-in backbone is missing from the installed package ({directory}): reinstall ws, or "
                "build one with `ws backbone pretrain --out DIR` and pass --backbone DIR"
            )
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
    """Load model, tokenizer and preprocessing constants from a checkpoint directory, frozen, onto ``device``.

    Everything a run needs is checked here, before any training: the normalisation, the tokenizer files (and that
    their ids fit the model's vocabulary), and the weights (a truncated safetensors file fails here)."""
    mean, std = _normalisation(directory)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar for a 1 MB checkpoint
    try:
        model = transformers.CLIPModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
        if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").is_file():
            raise DataError(
                f"backbone {directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt): copy "
                "them from the checkpoint the weights came from"
            )
        tokenizer = transformers.CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 (safetensors, tokenizers and transformers raise their own types)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load a CLIP checkpoint from {directory} ({first_line}): pass a directory with a "
            f"CLIP config.json, a complete model.safetensors and CLIP tokenizer files"
        ) from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    vocab = clip_configs(model)[0].vocab_size
    if len(tokenizer) > vocab or tokenizer.eos_token_id is None or tokenizer.eos_token_id >= vocab:
        raise DataError(
            f"backbone {directory}: the tokenizer ({len(tokenizer)} tokens) does not fit the text encoder's "
            f"vocabulary ({vocab}); use the tokenizer files saved with these weights"
        )
    model.requires_grad_(False)
    model.eval()
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
    autocast_dtype = None
    if device.type == "cuda":
        autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Backbone.of(
        model,
        tokenizer=tokenizer,
        name=name,
        fingerprint=fingerprint(directory),
        device=device,
        autocast_dtype=autocast_dtype,
        image_mean=mean,
        image_std=std,
    )


def _normalisation(directory: Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) from ``preprocessor_config.json``, falling back to CLIP's constants. The image size
    is the model's own (``vision_config.image_size``): pixels of any other size are rejected by CLIP.

    A preprocessor config that is not a JSON object, or whose ``image_mean``/``image_std`` is not three finite
    numbers (std > 0), raises DataError naming the file."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: not readable JSON ({exc}); fix the file or delete it to use CLIP's mean/std"
        ) from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: must be a JSON object; fix the file or delete it to use CLIP's mean/std")
    values = []
    for key, default in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        raw = config.get(key, default)
        try:
            triple = tuple(float(v) for v in raw) if isinstance(raw, list | tuple) else ()
        except (TypeError, ValueError):
            triple = ()
        if len(triple) != 3 or not all(math.isfinite(v) for v in triple) or (key == "image_std" and min(triple) <= 0):
            raise DataError(
                f"{path}: {key} must be a list of three finite numbers{' > 0' if key == 'image_std' else ''}, "
                f"got {raw!r}; fix the file"
            )
        values.append(triple)
    return values[0], values[1]


def smoke_test(backbone: Backbone) -> None:
    """Encode one prompt and one blank image through ``backbone``; DataError unless both give finite features."""
    from recorders.clip.encoders import image_features, text_features, token_embeddings

    ids = backbone.tokenize(["a photo of a thing."])
    pixels = torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=backbone.device)
    try:
        with torch.no_grad(), backbone.autocast():
            text = text_features(backbone.model, token_embeddings(backbone.model, ids), ids)
            image = image_features(backbone.model, pixels)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise DataError(f"backbone {backbone.name}: a test prompt and image do not go through it ({exc})") from None
    if not (torch.isfinite(text).all() and torch.isfinite(image).all()):
        raise DataError(f"backbone {backbone.name}: the weights give non-finite features; the checkpoint is damaged")


def builtin_sha256() -> tuple[str, str]:
    """SHA-256 of the shipped built-in weights file and the value recorded when it was shipped."""
    digest = hashlib.sha256((BUILTIN_DIR / "model.safetensors").read_bytes()).hexdigest()
    return digest, BUILTIN_SHA256


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
