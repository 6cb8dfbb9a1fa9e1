"""The run configuration of ``ws record``: one typed dataclass, per-method presets, TOML files and ``--set``.

Precedence, lowest first: the dataclass defaults, the method's preset (the reference hyperparameters), a
TOML file (``--config``: flat ``key = value`` lines using the field names below), ``--set key=value``
overrides in order, then the explicit command-line flags. Every key and value is checked before anything is
built or written; a bad one raises :class:`~recorders.format.errors.ConfigError` with a one-line message (unknown
keys list their near matches).

Only :meth:`Config.validate` imports torch (to parse ``gate_init`` with :class:`~recorders.methods.gates.GateInit`).
"""

from __future__ import annotations

import difflib
import math
import tomllib
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from recorders.format.errors import ConfigError
from recorders.methods.config import MethodConfig
from recorders.methods.registry import GATED_METHODS, METHODS

VARIANTS = ("standard", "param-matched", "always-frozen")
BIMAPLE_INITS = ("maple", "random")
ON_NAN = ("skip", "stop")


@dataclass(frozen=True)
class Config:
    """All of one ``ws record`` run (learning rates per optimiser step; epochs over the train set)."""

    # what to train, on what
    method: str = "coop-gating"
    dataset: str = "world"
    data_root: str = ""  # "" = $WS_DATA or the default data directory
    backbone: str = "builtin"  # "builtin" or a local Hugging Face CLIP checkpoint directory
    shots: int = 16  # training images per base class
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # optimisation (SGD with momentum, cosine schedule after a constant warm-up)
    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4  # applies to every trainable parameter, as in the reference
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5  # constant lr during warm-up
    # prompts
    n_ctx: int = MethodConfig.n_ctx  # learnable context tokens (per layer for the MaPLe family)
    ctx_init: str = MethodConfig.ctx_init  # "" = random N(0, 0.02²); its first n_ctx tokens initialise the context
    prompt_depth: int = MethodConfig.prompt_depth  # MaPLe J: layers that receive prompts (clipped to the depth)
    lambda_cyc: float = MethodConfig.lambda_cyc  # BiMaPLe cycle-consistency weight
    bimaple_init: str = MethodConfig.bimaple_init  # maple: vision prompts, f_{V→L} bias 0 (starts as MaPLe) | random
    lambda_sparse: float = MethodConfig.lambda_sparse  # AdaptiveBiMaPLe L1 weight on gate values
    lambda_smooth: float = MethodConfig.lambda_smooth  # AdaptiveBiMaPLe weight on squared adjacent depth-gate steps
    # interventions
    gate_init: str = MethodConfig.gate_init  # zero | uniform | biased[:VALUE]
    gate_lr_scale: float = 1.0  # gate parameters train at lr × this
    gate_weight_decay: float | None = None  # None = weight_decay (the reference decays gates too)
    clip_grad: float = 0.0  # max global gradient norm; 0 = off
    grad_equilibrium: bool = MethodConfig.grad_equilibrium  # ∂L/∂g ← min(1/(σ(1−σ)+1e-8), 10)·∂L/∂g
    gate_entropy: float = MethodConfig.gate_entropy  # λ·mean binary entropy of gate values added to the loss
    variant: str = MethodConfig.variant  # standard | param-matched | always-frozen
    on_nan: str = "stop"  # skip | stop: what a non-finite loss or gradient does
    # data and evaluation
    views: int = 8  # augmented views per training image in the frozen-feature cache
    crop_scale: float = 0.08  # smallest area fraction kept by the random resized crop (CoOp: 0.08)
    eval_batch_size: int = 100
    eval_at_start: bool = True  # evaluate before the first step (epoch 0)
    num_workers: int = 0
    # recording
    out: str = ""  # "" = recordings/<method>-<dataset>-s<seed>-<time>.h5
    flush_every: int = 256
    tensor_stride: int = 50  # full gradients of large parameters every this many steps
    # labels for grouping runs: `[tags]` in TOML or --set tags.NAME=VALUE; `ws batch` stores named-axis labels
    # here and `ws stats --by tags.NAME` groups by them. They never change training.
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self) -> Config:
        """Check values and combinations; return ``self`` or raise :class:`ConfigError`."""
        _choice("method", self.method, METHODS)
        _choice("variant", self.variant, VARIANTS)
        _choice("bimaple_init", self.bimaple_init, BIMAPLE_INITS)
        _choice("on_nan", self.on_nan, ON_NAN)
        for name in (
            "shots",
            "epochs",
            "batch_size",
            "n_ctx",
            "prompt_depth",
            "views",
            "eval_batch_size",
            "flush_every",
            "tensor_stride",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)} must be at least 1")
        for name in ("warmup_epochs", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} = {getattr(self, name)} must not be negative")
        for name in (
            "lr",
            "warmup_lr",
            "momentum",
            "weight_decay",
            "lambda_cyc",
            "lambda_sparse",
            "lambda_smooth",
            "gate_lr_scale",
            "clip_grad",
            "gate_entropy",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or (value < 0 and name != "gate_entropy"):
                raise ConfigError(f"{name} = {value} must be a finite, non-negative number")
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"crop_scale = {self.crop_scale} must be in (0, 1]")
        if self.lr == 0 or self.gate_lr_scale == 0:
            raise ConfigError("lr and gate_lr_scale must be positive")
        gwd = self.gate_weight_decay
        if gwd is not None and not (math.isfinite(gwd) and gwd >= 0):
            raise ConfigError(f"gate_weight_decay = {gwd} must be a finite, non-negative number")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed = {self.seed} must be in [0, 4294967295] (0 is a valid seed; seeds are 32-bit)")
        from recorders.data.datasets import DATASETS

        _choice("dataset", self.dataset, DATASETS)
        from recorders.methods.gates import GateInit

        GateInit.parse(self.gate_init)
        if self.method not in GATED_METHODS:
            used = [
                flag
                for flag, on in (
                    (f"--variant {self.variant}", self.variant != "standard"),
                    ("--gate-lr-scale", self.gate_lr_scale != 1.0),
                    ("--gate-init", self.gate_init != "zero"),
                    ("--gate-weight-decay", self.gate_weight_decay is not None),
                    ("--grad-equilibrium", self.grad_equilibrium),
                    ("--gate-entropy", self.gate_entropy != 0.0),
                )
                if on
            ]
            if used:
                raise ConfigError(
                    f"{used[0]} needs a gated method, but {self.method} has no gates; "
                    f"use one of {', '.join(GATED_METHODS)} or drop the flag"
                )
        optimiser_flags = self.grad_equilibrium or self.gate_lr_scale != 1 or gwd is not None
        if self.variant == "param-matched" and (optimiser_flags or self.gate_entropy):
            raise ConfigError(
                "--variant param-matched removes the gates, so gate interventions do not "
                "apply; drop them or use --variant standard"
            )
        if self.variant == "always-frozen" and optimiser_flags:
            raise ConfigError(
                "--variant always-frozen does not train the gates, so gate optimiser "
                "interventions do not apply; drop them or use --variant standard"
            )
        return self

    def method_config(self) -> MethodConfig:
        """The fields a method reads (:class:`~recorders.methods.config.MethodConfig`), nothing else."""
        return MethodConfig(**{f.name: getattr(self, f.name) for f in fields(MethodConfig)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COOP = {"epochs": 200, "batch_size": 32, "lr": 0.002, "n_ctx": 4, "ctx_init": "a photo of a"}
_COCOOP = {"epochs": 10, "batch_size": 1, "lr": 0.002, "n_ctx": 4, "ctx_init": "a photo of a"}
_MAPLE = {
    "epochs": 5,
    "batch_size": 4,
    "lr": 0.0035,
    "n_ctx": 2,
    "ctx_init": "a photo of a",
    "prompt_depth": 9,
}

#: Reference hyperparameters per method (CoOp, CoCoOp, MaPLe base-to-novel configs); gated forms share them.
PRESETS: dict[str, dict[str, Any]] = {
    "coop": _COOP,
    "coop-gating": _COOP,
    "cocoop": _COCOOP,
    "cocoop-gating": _COCOOP,
    "maple": _MAPLE,
    "bimaple": _MAPLE,
    "adaptive-bimaple": _MAPLE,
}

#: Per-dataset adjustments the references make (ImageNet trains CoOp for 50 epochs) and the built-in world's
#: short schedule, so the default run finishes in about a minute on a laptop CPU.
# The world's 24 px shapes fill the frame: CoOp's crops down to 8% of the area cut the shape out (zero-shot accuracy
# on such views fell to 38% against 84% on test images, and training on them lowered base accuracy), so the world
# keeps at least 80% of the image.
_WORLD: dict[str, Any] = {"crop_scale": 0.8}
DATASET_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("imagenet", "coop"): {"epochs": 50},
    ("imagenet", "coop-gating"): {"epochs": 50},
    ("world", "coop"): {"epochs": 20, **_WORLD},
    ("world", "coop-gating"): {"epochs": 20, **_WORLD},
    ("world", "cocoop"): {"epochs": 2, **_WORLD},
    ("world", "cocoop-gating"): {"epochs": 2, **_WORLD},
    ("world", "maple"): {"epochs": 3, **_WORLD},
    ("world", "bimaple"): {"epochs": 3, **_WORLD},
    ("world", "adaptive-bimaple"): {"epochs": 3, **_WORLD},
}
# world-mixed (the positive control, four domains) trains with the world's presets
DATASET_PRESETS |= {
    ("world-mixed", method): preset for (name, method), preset in list(DATASET_PRESETS.items()) if name == "world"
}

FIELDS = {f.name: f for f in fields(Config)}
_HINTS = typing.get_type_hints(Config)


def suggest(key: str, choices: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` for near matches of ``key`` among ``choices`` (``""`` when none)."""
    near = difflib.get_close_matches(key, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def _choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}{suggest(value, choices)} (choose from {', '.join(choices)})")


def _coerce(key: str, value: Any) -> Any:
    """Check (TOML values) or parse (``--set`` strings) ``value`` for field ``key``."""
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r}{suggest(key, FIELDS)} (see `ws record --help`)")
    if key == "tags":
        return _tags(value)
    hint = _HINTS[key]
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    kind = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if optional and text.lower() in ("", "none", "null"):
            return None
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes", "on")
            return kind(text)
        except ValueError:
            raise ConfigError(f"{key} = {value!r} is not a valid {kind.__name__}") from None
    if optional and value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} = {value!r} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _tags(value: Any) -> dict[str, str]:
    """A ``tags`` table: label names to string values (numbers and booleans are written as text)."""
    if not isinstance(value, dict) or not all(isinstance(v, str | int | float | bool) for v in value.values()):
        raise ConfigError(f"tags = {value!r} must be a table of labels, e.g. --set tags.intervention=lr50")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}


def parse_set(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` strings (from repeated ``--set``) into checked ``(key, value)`` pairs."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not key=value; write e.g. --set lr=0.01")
        key = key.strip().replace("-", "_")
        if key.startswith("tags."):
            out.append(("tags", _tags({key.removeprefix("tags."): value.strip()})))
            continue
        out.append((key, _coerce(key, value)))
    return out


def read_toml(path: str | Path, what: str = "config file", option: str = "--config") -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or invalid file is a one-line :class:`ConfigError`."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found; check the {option} path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read {what} ({exc}); check the {option} path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}); fix the file") from None


def load_toml(path: str | Path) -> list[tuple[str, Any]]:
    """Read a flat TOML config file into checked ``(key, value)`` pairs."""
    p = Path(path)
    raw = read_toml(p)
    pairs = []
    for key, value in raw.items():
        if isinstance(value, dict) and key != "tags":
            raise ConfigError(
                f"{p}: config files are flat key = value lines, found a table [{key}]; move its keys to the top level"
            )
        pairs.append((key.replace("-", "_"), _coerce(key.replace("-", "_"), value)))
    return pairs


def build_config(
    overrides: Iterable[tuple[str, Any]] = (),
    *,
    config_file: str | Path | None = None,
    sets: Iterable[str] = (),
) -> Config:
    """The validated config: defaults < presets (method, dataset) < ``config_file`` < ``sets`` < overrides.

    ``overrides`` are explicit command-line values (already typed; ``None`` values are ignored).
    """
    layers: list[tuple[str, Any]] = []
    if config_file is not None:
        layers += load_toml(config_file)
    layers += parse_set(sets)
    layers += [(k, _coerce(k, v)) for k, v in overrides if v is not None]
    chosen: dict[str, Any] = {}
    for key, value in layers:  # later layers win; tags merge label by label
        chosen[key] = {**chosen.get("tags", {}), **value} if key == "tags" else value
    method = chosen.get("method", Config.method)
    dataset = chosen.get("dataset", Config.dataset)
    _choice("method", method, METHODS)
    preset = {**PRESETS[method], **DATASET_PRESETS.get((dataset, method), {})}
    return replace(Config(), **{**preset, **chosen}).validate()
