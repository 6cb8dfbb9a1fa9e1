"""The ws recording format, schema v1.1: the one definition of what a recording holds.

A recording is one HDF5 file per training run (documented field by field in ``docs/recording-format.md``):

- root attributes identify the file: ``format``, ``schema_version``, ``status``, ``config`` (JSON), ``method``,
  ``seed``, ``dataset``, ``created``, ``finished``, ``ws_version``, ``device``, ``error``, ``total_steps``
  (optional: ``backbone_fingerprint``);
- per-step series (one row per recorded optimiser step, chunked and resizable along axis 0):
  ``steps/step`` (int64), ``steps/epoch`` (int32), ``steps/lr`` (float64), ``steps/loss/<term>``,
  ``grads/<group>/norm``, ``gates/<name>/{logit,value,dsigmoid,grad[,value_mean,value_std][,prompt_norm,cosine]
  [,factor_sigma,factor_norm,factor_cos,grad_task][,grad_<term>...][,bias,weight_shift,weight_along_init]}`` of shape
  ``(steps, n_gates)`` (the bracketed series after ``cosine`` are optional: older files lack them),
  ``prompts/<name>/{grad_norm,norm}`` of shape ``(steps, n_tokens)``;
- strided tensors ``tensors/<param>/{grad,step}``, evaluations ``eval/{step,epoch,base_acc,novel_acc,hm}`` and
  events ``events/{step,kind,message}``;
- since minor version 1 (root attribute ``schema_minor``; files without it are 1.0), when the layout declares an
  :class:`EvalSpec`, one row per evaluation of ``eval/val_acc``, ``eval/correct/<model>`` (per-image correctness
  of the trained model and of each counterfactual) and ``eval/gates/<set>/<stat>`` (instance gates over the test
  images). Every 1.1 addition is optional: a reader treats its absence as "not recorded".

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
#: Minor version: additions a version-1 reader can ignore (1.1: validation accuracy, counterfactual evaluations,
#: instance-gate statistics over the test images). Files written before it have no ``schema_minor`` attribute.
SCHEMA_MINOR = 1
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
FACTOR_SERIES = ("factor_sigma", "factor_norm", "factor_cos", "grad_task")  # optional: gate sets with ``factors``
INSTANCE_PARAM_SERIES = ("bias", "weight_shift", "weight_along_init")  # optional: instance sets with ``init_bias``
PROMPT_SERIES = ("grad_norm", "norm")
EVAL_FIELDS = ("step", "epoch", "base_acc", "novel_acc", "hm")
EVENT_FIELDS = ("step", "kind", "message")
EVENT_KINDS = ("epoch_end", "eval", "nonfinite", "note")
COUNTERFACTUALS = ("mean", "init", "open")  # gates held at their test-set mean / reset to init / removed (σ = 1)
EVAL_GATE_STATS = ("mean", "std", "class_std", "domain_std")  # instance gates' σ over the test images
VAL_ACC = "eval/val_acc"
# Events are stored as fixed-size arrays a SWMR reader can read at any moment (variable-length strings live in
# HDF5's global heap, which a reader following a live file can catch half-written): ``events/text`` holds the
# UTF-8 bytes of every kind and message, ``events/span`` one ``(offset, kind_bytes, message_bytes)`` row per
# event, ``events/step`` the steps; its length is the number of committed events. Files written before this
# encoding hold ``events/kind`` and ``events/message`` as variable-length strings; readers accept both.
EVENT_STEP = "events/step"
EVENT_TEXT = "events/text"
EVENT_SPAN = "events/span"
#: The status history, ``(k,)`` fixed-length byte strings: ``running`` at creation, then the final status. Its
#: last entry equals the ``status`` attribute. A SWMR reader follows it like any growing dataset (HDF5 gives a
#: live reader no way to re-read a changed root attribute). Optional: older files lack it.
STATUS_LOG = "state/status"
#: Root attributes the writer updates while the file is in SWMR mode are fixed-length byte strings of at least
#: this many bytes, so an update rewrites them in place.
STATUS_ATTR_BYTES = 32

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


def term_series(term: str) -> str:
    """The gate series holding the part of ∂L/∂g that loss term ``term`` contributes directly (``grad_<term>``)."""
    return f"grad_{term}"


def prompt_path(name: str, series: str = "grad_norm") -> str:
    """Per-step, per-token prompt series, ``(steps, n_tokens)`` float32."""
    return f"prompts/{name}/{series}"


def tensor_path(name: str, what: str = "grad") -> str:
    """Strided full tensors: ``grad`` is ``(k, *shape)`` float32, ``step`` is ``(k,)`` int64."""
    return f"tensors/{name}/{what}"


def correct_path(model: str) -> str:
    """Per-evaluation, per-test-image correctness of ``model`` (``trained`` or a counterfactual), ``(evals,
    n_base + n_novel)`` uint8 (1 = top-1 right; base images first)."""
    return f"eval/correct/{model}"


def eval_gate_path(gate_set: str, stat: str) -> str:
    """Per-evaluation statistic of an instance gate set's σ over the test images, ``(evals, n_gates)`` float32."""
    return f"eval/gates/{gate_set}/{stat}"


def status_attr(value: str) -> np.ndarray:
    """``value`` as a fixed-length UTF-8 byte string attribute of at least :data:`STATUS_ATTR_BYTES` bytes
    (readers decode it; see ``_py`` in the reader)."""
    raw = value.encode("utf-8", "replace")
    return np.array(raw, dtype=f"S{max(STATUS_ATTR_BYTES, len(raw))}")


def dsigmoid_from_logit(logit: np.ndarray) -> np.ndarray:
    """σ'(g) = σ(g)(1−σ(g)) computed as e^{−|g|}/(1+e^{−|g|})², accurate where σ rounds to 0 or 1."""
    e = np.exp(-np.abs(logit))
    return e / (1.0 + e) ** 2


#: A gate is saturated when σ(g) lies outside ``(SATURATED_BELOW, SATURATED_ABOVE)``: off below, fully on above
#: (there σ'(g) < 0.0475, under a fifth of its maximum 0.25). The recorder's summary and the analyses share it.
SATURATED_BELOW = 0.05
SATURATED_ABOVE = 0.95


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

    Optional (files written before these existed read with the defaults, and their series are missing):
    ``factors``: the exact ratio factors ``factor_sigma`` (1 − σ), ``factor_norm`` (‖u‖) and ``factor_cos``
    (|cos(∂L/∂ũ, u)|) of the gated vector u (per input for instance gates, then the geometric mean over the batch),
    and ``grad_task``, the part of ∂L/∂g that flows through ũ, before any equilibrium rescale (instance: summed
    over the batch); ``vector_dim`` is the length of u (0: unknown). ``terms``: loss terms that act on the gate
    values directly, each recorded as ``grad_<term>`` (∂term/∂g, before the rescale). ``equilibrium``: the
    recorded ``grad`` is rescaled by α = min(1/(σ' + ε), cap). ``init_bias`` and ``init_weight_norm`` (instance
    gates, float64): the bias and the norm of each gate's weight row before training; with them ``bias``,
    ``weight_shift`` (‖W_i − W_i(0)‖) and ``weight_along_init`` (⟨W_i − W_i(0), W_i(0)⟩ / ‖W_i(0)‖) are recorded.
    """

    name: str
    n_gates: int
    kind: str
    prompt: str = ""
    decomposition: bool = False
    group: str = ""
    init_logit: tuple[float, ...] = ()
    labels: tuple[str, ...] = ()
    factors: bool = False
    vector_dim: int = 0
    terms: tuple[str, ...] = ()
    equilibrium: bool = False
    init_bias: tuple[float, ...] = ()
    init_weight_norm: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_name("gate set", self.name)
        if self.kind not in GATE_KINDS:
            raise ValueError(f"gate kind {self.kind!r} is not one of {GATE_KINDS}")
        if self.n_gates < 1:
            raise ValueError("a gate set needs at least one gate")

    @property
    def series(self) -> tuple[str, ...]:
        extra = INSTANCE_SERIES if self.kind == "instance" else ()
        out = GATE_SERIES + extra + (DECOMPOSITION_SERIES if self.decomposition else ())
        out += FACTOR_SERIES if self.factors else ()
        out += tuple(term_series(t) for t in self.terms)
        return out + (INSTANCE_PARAM_SERIES if self.kind == "instance" and self.init_bias else ())


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
class EvalSpec:
    """What each evaluation records besides base/novel accuracy (schema 1.1).

    ``n_base``/``n_novel``: test images per half (the columns of ``eval/correct/<model>``, base first);
    ``counterfactuals``: the subset of :data:`COUNTERFACTUALS` evaluated; ``instance_gates``: gate sets whose σ
    statistics over the test images are recorded.
    """

    n_base: int
    n_novel: int
    counterfactuals: tuple[str, ...] = ()
    instance_gates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.counterfactuals) - set(COUNTERFACTUALS)
        if unknown:
            raise ValueError(f"counterfactuals {sorted(unknown)} are not among {COUNTERFACTUALS}")

    @property
    def models(self) -> tuple[str, ...]:
        return ("trained", *self.counterfactuals)


@dataclass(frozen=True)
class Layout:
    """Everything a recording will hold, declared before the first step (SWMR cannot add datasets later)."""

    loss_terms: tuple[str, ...] = ("total",)
    groups: tuple[GroupSpec, ...] = ()
    gate_sets: tuple[GateSetSpec, ...] = ()
    prompts: tuple[PromptSpec, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()
    evaluation: EvalSpec | None = None  # schema 1.1; None in 1.0 files

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
                GateSetSpec(**{**g, **{k: tuple(g[k]) for k in _TUPLE_FIELDS if k in g}}) for g in raw["gate_sets"]
            ),
            prompts=tuple(PromptSpec(**p) for p in raw["prompts"]),
            tensors=tuple(TensorSpec(**{**t, "shape": tuple(t["shape"])}) for t in raw["tensors"]),
            evaluation=_eval_spec(raw.get("evaluation")),
        )


_TUPLE_FIELDS = ("init_logit", "labels", "terms", "init_bias", "init_weight_norm")


def _eval_spec(raw: dict | None) -> EvalSpec | None:
    if raw is None:
        return None
    return EvalSpec(raw["n_base"], raw["n_novel"], tuple(raw["counterfactuals"]), tuple(raw.get("instance_gates", ())))


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·b·n/(b+n), 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)
