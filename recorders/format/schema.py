"""The ws recording format, schema v1: the one definition of what a recording holds.

A recording is one HDF5 file per training run (documented field by field in ``docs/recording-format.md``):

- root attributes identify the file: ``format``, ``schema_version``, ``status``, ``config`` (JSON), ``method``,
  ``seed``, ``dataset``, ``created``, ``finished``, ``ws_version``, ``device``, ``error``, ``total_steps``
  (optional: ``backbone_fingerprint``);
- per-step series (one row per recorded optimiser step, chunked and resizable along axis 0):
  ``steps/step`` (int64), ``steps/epoch`` (int32), ``steps/lr`` (float64), ``steps/loss/<term>``,
  ``grads/<group>/norm``, ``gates/<name>/{logit,value,dsigmoid,grad[,value_mean,value_std][,prompt_norm,cosine]}``
  of shape ``(steps, n_gates)``, ``prompts/<name>/{grad_norm,norm}`` of shape ``(steps, n_tokens)``;
- strided tensors ``tensors/<param>/{grad,step}``, evaluations ``eval/{step,epoch,base_acc,novel_acc,hm}`` and
  events ``events/{step,kind,message}``.

The writer buffers rows in memory and appends them as blocks (every ``flush_every`` steps or ``flush_seconds``
seconds) to a file in SWMR mode, flushing after each block, so a killed writer leaves a file that opens with every
row up to the last flush and a reader can follow a live run. ``steps/step`` is written last in each block: its
length is the number of committed rows, and the reader clips every other series to it.

Only numpy and h5py are needed here, so the analyses and the viewer can read recordings without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

FORMAT_NAME = "ws-recording"
SCHEMA_VERSION = 1
STATUSES = ("running", "complete", "failed")
ROLES = ("prompt", "gate", "coupling", "meta", "other")
GATE_KINDS = ("length", "depth", "instance")
CHUNK_ROWS = 1024
RECORDINGS_DIR = Path("recordings")  # where ws writes recordings by default (relative to the working directory)

STEP = "steps/step"
EPOCH = "steps/epoch"
LR = "steps/lr"
GATE_SERIES = ("logit", "value", "dsigmoid", "grad")
INSTANCE_SERIES = ("value_mean", "value_std")
DECOMPOSITION_SERIES = ("prompt_norm", "cosine")
PROMPT_SERIES = ("grad_norm", "norm")
EVAL_FIELDS = ("step", "epoch", "base_acc", "novel_acc", "hm")
EVENT_FIELDS = ("step", "kind", "message")
EVENT_KINDS = ("epoch_end", "eval", "nonfinite", "collapse_onset", "note")

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def ws_version() -> str:
    """The installed ws version, or ``"0+unknown"`` when running from an uninstalled tree."""
    try:
        return metadata.version("ws")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def loss_path(term: str) -> str:
    """Per-step loss term, shape ``(steps,)`` float32."""
    return f"steps/loss/{term}"


def grad_norm_path(group: str) -> str:
    """Per-step L2 norm of a parameter group's gradient (after AMP unscaling), ``(steps,)`` float32."""
    return f"grads/{group}/norm"


def gate_path(name: str, series: str) -> str:
    """Per-step gate series, ``(steps, n_gates)`` float32; ``series`` is one of the gate series names."""
    return f"gates/{name}/{series}"


def prompt_path(name: str, series: str = "grad_norm") -> str:
    """Per-step, per-token prompt series, ``(steps, n_tokens)`` float32."""
    return f"prompts/{name}/{series}"


def tensor_path(name: str, what: str = "grad") -> str:
    """Strided full tensors: ``grad`` is ``(k, *shape)`` float32, ``step`` is ``(k,)`` int64."""
    return f"tensors/{name}/{what}"


def dsigmoid_from_logit(logit: np.ndarray) -> np.ndarray:
    """σ'(g) = σ(g)(1−σ(g)) computed as e^{−|g|}/(1+e^{−|g|})², accurate where σ rounds to 0 or 1."""
    e = np.exp(-np.abs(logit))
    return e / (1.0 + e) ** 2


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must match {_NAME.pattern} (it becomes an HDF5 path component)")
    return name


@dataclass(frozen=True)
class GroupSpec:
    """A trainable parameter group and its optimiser settings (stored as attributes of ``grads/<name>``).

    ``lr_scale`` multiplies the scheduled base learning rate ``steps/lr`` for this group.
    """

    name: str
    role: str
    n_params: int
    lr_scale: float = 1.0
    weight_decay: float = 0.0
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check_name("group", self.name)
        if self.role not in ROLES:
            raise ValueError(f"group role {self.role!r} is not one of {ROLES}")


@dataclass(frozen=True)
class GateSetSpec:
    """A set of ``n_gates`` sigmoid gates recorded together.

    ``kind``: ``length`` (one gate per prompt token), ``depth`` (one per insertion layer) or ``instance`` (logits
    computed from each input; recorded series are batch means, plus ``value_mean``/``value_std`` across the batch).
    ``prompt`` names the prompt set whose tokens the gates scale; with ``decomposition`` the factors
    ``prompt_norm`` (‖C_i‖) and ``cosine`` (cos(∂L/∂C̃_i, C_i)) are recorded too. ``group`` is the parameter group
    that holds the gate parameters, ``init_logit`` the logits before training (static gates).
    """

    name: str
    n_gates: int
    kind: str
    prompt: str = ""
    decomposition: bool = False
    group: str = ""
    init_logit: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("gate set", self.name)
        if self.kind not in GATE_KINDS:
            raise ValueError(f"gate kind {self.kind!r} is not one of {GATE_KINDS}")
        if self.n_gates < 1:
            raise ValueError("a gate set needs at least one gate")

    @property
    def series(self) -> tuple[str, ...]:
        extra = INSTANCE_SERIES if self.kind == "instance" else ()
        return GATE_SERIES + extra + (DECOMPOSITION_SERIES if self.decomposition else ())


@dataclass(frozen=True)
class PromptSpec:
    """A set of ``n_tokens`` learnable prompt tokens; per-token gradient norm and value norm are recorded."""

    name: str
    n_tokens: int
    group: str = ""

    def __post_init__(self) -> None:
        _check_name("prompt", self.name)


@dataclass(frozen=True)
class TensorSpec:
    """A parameter whose full gradient is stored every ``stride`` steps."""

    name: str
    shape: tuple[int, ...]
    stride: int = 1

    def __post_init__(self) -> None:
        _check_name("tensor", self.name)
        if self.stride < 1:
            raise ValueError("tensor stride must be >= 1")


@dataclass(frozen=True)
class Layout:
    """Everything a recording will hold, declared before the first step (SWMR cannot add datasets later)."""

    loss_terms: tuple[str, ...] = ("total",)
    groups: tuple[GroupSpec, ...] = ()
    gate_sets: tuple[GateSetSpec, ...] = ()
    prompts: tuple[PromptSpec, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()

    def __post_init__(self) -> None:
        for term in self.loss_terms:
            _check_name("loss term", term)
        for kind, items in (
            ("group", self.groups),
            ("gate set", self.gate_sets),
            ("prompt", self.prompts),
            ("tensor", self.tensors),
        ):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names in {names}")

    def step_series(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every per-step dataset path with its row shape and dtype (``steps/step`` last)."""
        f32 = np.dtype("float32")
        out: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            EPOCH: ((), np.dtype("int32")),
            LR: ((), np.dtype("float64")),
        }
        for term in self.loss_terms:
            out[loss_path(term)] = ((), f32)
        for group in self.groups:
            out[grad_norm_path(group.name)] = ((), f32)
        for gates in self.gate_sets:
            for series in gates.series:
                out[gate_path(gates.name, series)] = ((gates.n_gates,), f32)
        for prompt in self.prompts:
            for series in PROMPT_SERIES:
                out[prompt_path(prompt.name, series)] = ((prompt.n_tokens,), f32)
        out[STEP] = ((), np.dtype("int64"))
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        raw = json.loads(text)
        return cls(
            loss_terms=tuple(raw["loss_terms"]),
            groups=tuple(GroupSpec(**g) for g in raw["groups"]),
            gate_sets=tuple(
                GateSetSpec(**{**g, "init_logit": tuple(g["init_logit"]), "labels": tuple(g["labels"])})
                for g in raw["gate_sets"]
            ),
            prompts=tuple(PromptSpec(**p) for p in raw["prompts"]),
            tensors=tuple(TensorSpec(**{**t, "shape": tuple(t["shape"])}) for t in raw["tensors"]),
        )


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·b·n/(b+n), 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)
