"""The one ``Gate`` module type: every sigmoid gate in ws is an instance, so probes find gates by type.

A gate set holds ``n`` logits g and outputs σ(g). Kinds:

- ``length``: one gate per prompt token, p̃_i = σ(g_i)·p_i (static logits, a parameter of shape ``(n,)``);
- ``depth``: one gate per prompt-insertion layer (static logits ``(n,)``);
- ``instance``: logits computed from each input by a linear map of its feature, ``(B, n)`` per batch.

A method applies a gate with ``gate.gated(values, u)``: ũ_i = σ(g_i)·u_i, where ``u_i`` is everything after the gate
axis of ``u`` (the gated vector: a context token, C_i + π(x) for CoCoOp-gating, a whole layer's prompts for a depth
gate). Under a probe (``capture = True``) ũ keeps its gradient and the probe reads ∂L/∂ũ and u, which is what the
exact gate/prompt gradient-ratio factors need (see ``docs/analyses.md``).

Interventions that act on the gate itself live here too: initialisation (``zero``, ``uniform``,
``biased[:VALUE]``), the gradient-equilibrium rescale ∂L/∂g ← α·∂L/∂g with α = min(1/(σ(g)(1−σ(g)) + ε), cap),
and freezing (``always-frozen``). :func:`replaced_gates` runs a model with its gates' outputs replaced (the
counterfactual evaluations: gates held at a mean, reset to their initial parameters, or removed, σ = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from recorders.format.errors import ConfigError

EQUILIBRIUM_EPS = 1e-8
EQUILIBRIUM_CAP = 10.0


@dataclass(frozen=True)
class GateInit:
    """How gate logits start: ``zero`` (σ=0.5), ``uniform`` (U(-1, 1)), or ``biased`` at ``value`` (default 3)."""

    kind: str = "zero"
    value: float = 3.0

    @classmethod
    def parse(cls, text: str) -> GateInit:
        """Parse ``zero``, ``uniform``, ``biased`` or ``biased:VALUE``."""
        kind, _, value = text.partition(":")
        if kind not in ("zero", "uniform", "biased") or (value and kind != "biased"):
            raise ConfigError(f"gate init {text!r} is not valid; use zero, uniform, biased or biased:VALUE")
        if not value:
            return cls(kind)
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"gate init {text!r}: {value!r} is not a number; use e.g. biased:3") from None
        if not math.isfinite(number):
            raise ConfigError(f"gate init {text!r}: the bias must be finite")
        return cls(kind, number)

    def fill_(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            if self.kind == "zero":
                return tensor.zero_()
            if self.kind == "uniform":
                return tensor.uniform_(-1.0, 1.0, generator=generator)
            return tensor.fill_(self.value)


def dsigmoid(logit: torch.Tensor) -> torch.Tensor:
    """σ'(g) = σ(g)·σ(−g) (= e^{−|g|}/(1+e^{−|g|})²), stable where float32 σ(g)(1−σ(g)) rounds to 0: the small
    factor is computed directly, never as 1 − σ."""
    return torch.sigmoid(logit) * torch.sigmoid(-logit)


def equilibrium_scale(logit: torch.Tensor, eps: float = EQUILIBRIUM_EPS, cap: float = EQUILIBRIUM_CAP) -> torch.Tensor:
    """α = min(1/(σ(g)(1−σ(g)) + ε), cap), the gradient-equilibrium factor per gate."""
    return torch.clamp(1.0 / (dsigmoid(logit) + eps), max=cap)


class GatedPart(NamedTuple):
    """One captured :meth:`Gate.gated` call: ``out`` = ũ (its ``grad`` is G = ∂L/∂ũ after backward), ``vector`` = u
    (detached), and ``scale``, the view of an instance gate's values that multiplied u (its ``grad`` is ⟨G_i, u_i⟩
    per input and gate, shape ``(*values.shape, 1, ...)``; None for static gates and when the values need no
    gradient, e.g. a frozen gate)."""

    out: torch.Tensor
    vector: torch.Tensor
    scale: torch.Tensor | None


class Gate(nn.Module):
    """A set of ``n_gates`` sigmoid gates.

    ``forward(features=None)`` returns gate values σ(g): shape ``(n_gates,)`` for ``length``/``depth`` gates,
    ``(B, n_gates)`` for ``instance`` gates given ``features`` of shape ``(B, feature_dim)``.

    With ``capture = True`` (set by probes) the last logits tensor of a forward in grad mode is kept in
    ``last_logits`` with its gradient retained after backward, so ∂L/∂g can be read for instance gates too, and,
    when ``vector_dim`` is declared, every :meth:`gated` call of that forward is kept in ``parts`` (see
    :meth:`gated`); a forward under ``torch.no_grad()`` (an evaluation) leaves them as they were. ``equilibrium = True``
    rescales the gradient flowing into the logits by :func:`equilibrium_scale`. ``vector_dim`` is the length of the
    gated vector u_i (summed over every vector the gate scales; 0 = not declared): a method declares it so that
    probes record the ratio factors.
    """

    def __init__(
        self,
        n_gates: int,
        kind: str = "length",
        *,
        init: GateInit | str = "zero",
        feature_dim: int | None = None,
        prompt: str = "",
        vector_dim: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("length", "depth", "instance"):
            raise ConfigError(f"gate kind {kind!r} is not one of length, depth, instance")
        init = GateInit.parse(init) if isinstance(init, str) else init
        self.n_gates = n_gates
        self.kind = kind
        self.prompt = prompt
        self.init = init
        self.equilibrium = False
        self.proj: nn.Linear | None
        self.logits: nn.Parameter | None
        self.capture = False
        self.vector_dim = vector_dim
        self.last_logits: torch.Tensor | None = None
        self.replacement: Replacement | None = None
        self.parts: list[GatedPart] = []  # every gated() call since forward
        self.forwards = 0  # captured forwards since a probe last read the capture (2+: gradient accumulation)
        self.gated_dim = 0  # values per gate that this forward's captured gated() calls scaled (vs vector_dim)
        self._values: torch.Tensor | None = None
        if kind == "instance":
            if not feature_dim:
                raise ConfigError("an instance gate needs feature_dim")
            self.proj = nn.Linear(feature_dim, n_gates)
            with torch.no_grad():
                self.proj.weight.normal_(0.0, 0.02, generator=generator)
                init.fill_(self.proj.bias, generator)
            self.logits = None
        else:
            self.proj = None
            self.logits = nn.Parameter(init.fill_(torch.empty(n_gates), generator))

    def compute_logits(self, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits g: ``(n_gates,)`` for static gates, ``(B, n_gates)`` for instance gates."""
        if self.proj is not None:
            if features is None:
                raise ValueError("instance gates need the input features")
            return self.proj(features.to(self.proj.weight.dtype))
        assert self.logits is not None
        return self.logits.view_as(self.logits)  # a non-leaf view, so hooks and capture leave the parameter alone

    def forward(self, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.replacement is not None:
            return self.replacement(features)
        logits = self.compute_logits(features)
        if logits.requires_grad:
            if self.equilibrium:
                scale = equilibrium_scale(logits.detach())
                logits.register_hook(lambda grad: grad * scale)
            if self.capture:
                logits.retain_grad()
        values = torch.sigmoid(logits)
        if torch.is_grad_enabled():  # a no-grad pass (an evaluation) leaves the last training forward's capture
            self.last_logits = logits if self.capture else None
            self.parts = []
            self._values = values if self.capture else None
            self.forwards += self.capture
            self.gated_dim = 0
        return values

    def gated(self, values: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """ũ = σ(g)·u: ``values`` (this gate's last output, ``(n,)`` or ``(B, n)``) times ``vector`` of shape
        ``(*values.shape, ...)``; u_i is everything after the gate axis.

        With ``capture`` on, the product keeps its gradient G = ∂L/∂ũ after backward, an instance gate's broadcast
        view of the values keeps ∂L/∂σ of this call (⟨G_i, u_i⟩ per input, which autograd computes anyway), and a
        :class:`GatedPart` is appended to ``parts`` (no computation). Several calls in one forward (a gate acting on
        text and vision tokens) make the gated vector their concatenation.
        """
        lead = values.dim()
        scale = values.reshape(*values.shape, *(1,) * (vector.dim() - lead))  # a new tensor even when no axis is added
        out = scale * vector
        if not (self.capture and out.requires_grad):
            return out
        if values is not self._values:
            raise ValueError(
                "gated() takes the tensor this gate's last forward returned as its values (not a copy or a view of "
                "it); pass that output unchanged"
            )
        if tuple(vector.shape[:lead]) != tuple(values.shape):
            raise ValueError(
                f"gated() takes a vector of shape {tuple(values.shape)} + (...) for values of shape "
                f"{tuple(values.shape)}, got a vector of {tuple(vector.shape)}"
            )
        if self.vector_dim:  # without a declared vector no ratio factors are recorded: nothing of ũ is kept
            out.retain_grad()
            keep = self.proj is not None and scale.requires_grad  # ⟨G, u⟩ per input from autograd (instance gates)
            if keep:
                scale.retain_grad()
            self.parts.append(GatedPart(out, vector.detach(), scale if keep else None))
            self.gated_dim += vector.numel() // max(values.numel(), 1)
        return out

    def release(self) -> None:
        """Drop the captured tensors and counts (a probe's close: no graph tensor stays alive through the gate)."""
        self.last_logits, self.parts, self._values = None, [], None
        self.forwards = self.gated_dim = 0

    def __getstate__(self) -> dict[str, object]:
        """Copies and pickles leave the captured tensors behind (a graph tensor cannot be deep-copied)."""
        return {**super().__getstate__(), "last_logits": None, "parts": [], "_values": None}

    def extra_repr(self) -> str:
        return f"n_gates={self.n_gates}, kind={self.kind}, init={self.init.kind}"


def find_gates(module: nn.Module) -> dict[str, Gate]:
    """Every :class:`Gate` inside ``module`` by qualified name (``""`` if ``module`` itself is one)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Gate)}


#: A gate's stand-in output: features ``(B, feature_dim)`` or None → values of the gate's output shape.
Replacement = Callable[[torch.Tensor | None], torch.Tensor]


@contextmanager
def replaced_gates(module: nn.Module, replacements: Mapping[str, Replacement]) -> Iterator[None]:
    """Within the block, each named gate (names as :func:`find_gates` gives them) returns its replacement's
    output instead of σ(g); the gates are restored on exit, also on error."""
    gates = find_gates(module)
    unknown = set(replacements) - gates.keys()
    if unknown:
        raise KeyError(f"no gates named {sorted(unknown)} in the module")
    try:
        for name, replacement in replacements.items():
            gates[name].replacement = replacement
        yield
    finally:
        for name in replacements:
            gates[name].replacement = None


def constant_values(gate: Gate, values: torch.Tensor) -> Replacement:
    """A replacement that outputs ``values`` ``(n_gates,)`` for every input (``(B, n_gates)`` for instance gates)."""
    values = values.detach().float()

    def replacement(features: torch.Tensor | None) -> torch.Tensor:
        if gate.kind == "instance" and features is not None:
            return values.to(features.device).expand(len(features), -1)
        return values

    return replacement


def initial_replacement(gate: Gate, state: Mapping[str, torch.Tensor]) -> Replacement:
    """A replacement that computes σ with the gate's parameters as they were in ``state`` (a state-dict copy)."""
    if gate.kind != "instance":
        return constant_values(gate, torch.sigmoid(state["logits"].float()))
    weight, bias = state["proj.weight"], state["proj.bias"]

    def replacement(features: torch.Tensor | None) -> torch.Tensor:
        assert features is not None
        return torch.sigmoid(torch.nn.functional.linear(features.to(weight.dtype), weight, bias))

    return replacement


def gate_states(module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Detached copies of every gate's parameters by gate name (to reset them in :func:`initial_replacement`)."""
    return {
        name: {k: v.detach().clone() for k, v in gate.state_dict().items()} for name, gate in find_gates(module).items()
    }
