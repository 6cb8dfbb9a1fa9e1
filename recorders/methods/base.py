"""What every prompt-learning method shares: class prompts, context init, gates (and their variants), groups.

A method is an ``nn.Module`` holding only its trainable parameters; the frozen CLIP lives in
``self.backbone`` (a :class:`~recorders.clip.backbone.Backbone`, deliberately not a submodule, so
``parameters()`` is exactly what trains).

Data contract of :meth:`PromptMethod.forward`: ``inputs`` are unnormalised image features ``(B, embed_dim)``
from the frozen encoder (``needs_pixels = False``) or pixel values ``(B, 3, H, W)`` (``needs_pixels = True``);
``classes`` come from :meth:`PromptMethod.encode_classes`; the output holds logits ``(B, C)`` (CLIP's scaled
cosine similarities) and the regularisation terms of the loss, already weighted, each a scalar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recorders.format.errors import ConfigError
from recorders.methods.config import MethodConfig
from recorders.methods.gates import Gate

if TYPE_CHECKING:
    from transformers import CLIPModel

    from recorders.clip.backbone import Backbone


@dataclass
class ClassPrompts:
    """Tokenised prompts for a set of classes, cut after the longest end-of-text token.

    ``input_ids``: ``(C, L)`` int64; ``embeds``: ``(C, L, D_text)`` frozen token embeddings (no positions);
    learned context replaces positions ``[1, 1 + n_ctx)``.
    """

    names: list[str]
    input_ids: torch.Tensor
    embeds: torch.Tensor

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class MethodOutput:
    """``logits``: ``(B, C)`` float32; ``terms``: weighted regulariser scalars by loss-term name."""

    logits: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ParamGroup:
    """A named optimiser group; ``role`` is one of prompt, gate, coupling, meta, other."""

    name: str
    role: str
    params: list[nn.Parameter]

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)


class PlainScale(nn.Module):
    """The ``param-matched`` stand-in for a :class:`Gate`: the same parameter count, no sigmoid, and the same
    starting value, so the matched model starts exactly where the gated model starts.

    Built from the gate it replaces (after that gate drew its initial logits, so every other parameter draws the
    same numbers under either variant). Static (``length``/``depth``): ``s0 + w`` with ``s0 = σ(g0)`` (a buffer)
    and ``w`` ``(n,)`` starting at 0, so at step 0 it returns the gate's values bit for bit. Instance: ``s0 + W·x + b``
    ``(B, n)`` with ``s0 = σ(c0)`` (the gate's initial bias c0), ``W = σ'(c0)·W0`` (the gate's initial weights) and
    ``b = 0``: the gate's first-order expansion around x = 0, its value and input slope at init.
    """

    start: torch.Tensor

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.kind = gate.kind
        self.n_gates = gate.n_gates
        self.proj_weight: nn.Parameter | None = None
        self.proj_bias: nn.Parameter | None = None
        self.weight: nn.Parameter | None = None
        with torch.no_grad():
            if gate.proj is not None:
                bias = gate.proj.bias.detach().float()
                self.register_buffer("start", torch.sigmoid(bias).clone())
                slope = torch.sigmoid(bias) * torch.sigmoid(-bias)
                self.proj_weight = nn.Parameter(gate.proj.weight.detach().float() * slope[:, None])
                self.proj_bias = nn.Parameter(torch.zeros_like(bias))
            else:
                assert gate.logits is not None
                self.register_buffer("start", torch.sigmoid(gate.logits.detach()).clone())
                self.weight = nn.Parameter(torch.zeros(gate.n_gates))

    def forward(self, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.proj_weight is not None:
            assert features is not None and self.proj_bias is not None
            return self.start + F.linear(features.to(self.proj_weight.dtype), self.proj_weight, self.proj_bias)
        assert self.weight is not None
        return self.start + self.weight

    def gated(self, values: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """``values`` times ``vector`` along the gate axis, as :meth:`Gate.gated` (nothing is captured)."""
        return values.reshape(*values.shape, *(1,) * (vector.dim() - values.dim())) * vector


def binary_entropy(values: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy (nats) of gate values in (0, 1)."""
    v = values.clamp(1e-6, 1 - 1e-6)
    return -(v * v.log() + (1 - v) * (1 - v).log()).mean()


class PromptMethod(nn.Module):
    """Base class: subclasses build parameters and define ``forward`` and ``_groups`` (names live in the registry)."""

    needs_pixels: ClassVar[bool] = False
    #: True when the text prompts depend on the input (CoCoOp family): one text forward per image, so evaluation
    #: runs in ``eval_batch_size`` batches. Otherwise a forward over held features encodes the classes once for any
    #: batch size, and evaluation scores a whole split in one call.
    text_per_input: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.generator = generator
        self.n_ctx = cfg.n_ctx

    # ------------------------------------------------------------------ prompts
    @property
    def clip(self) -> CLIPModel:
        return self.backbone.model

    def _init_tokens(self) -> torch.Tensor:
        """Token ids of ``cfg.ctx_init`` without start/end tokens, ``(k,)`` (empty for random init)."""
        if not self.cfg.ctx_init:
            return torch.empty(0, dtype=torch.long)
        ids = self.backbone.tokenize([self.cfg.ctx_init])[0]
        eot = int(ids.argmax())
        return ids[1:eot]

    def init_context(self) -> torch.Tensor:
        """Initial context ``(n_ctx, D_text)``: the first ``n_ctx`` tokens of ``ctx_init``, or N(0, 0.02²)."""
        tokens = self._init_tokens()
        width = self.backbone.text_width
        if len(tokens) == 0:
            return torch.randn(self.n_ctx, width, generator=self.generator) * 0.02
        if len(tokens) < self.n_ctx:
            raise ConfigError(
                f"ctx_init {self.cfg.ctx_init!r} has {len(tokens)} tokens but n_ctx = {self.n_ctx}; "
                'use a longer ctx_init, a smaller n_ctx, or ctx_init = "" for random init'
            )
        from recorders.clip.encoders import token_embeddings

        with torch.no_grad():
            embeds = token_embeddings(self.clip, tokens[None, : self.n_ctx])[0]
        return embeds.detach().float().cpu().clone()

    def encode_classes(self, names: Sequence[str]) -> ClassPrompts:
        """Prompts ``"{ctx_init} {name}."`` (or ``n_ctx`` placeholders + ``"{name}."``) for every class."""
        from recorders.clip.encoders import token_embeddings

        init = self._init_tokens()
        if len(init):
            ids = self.backbone.tokenize([f"{self.cfg.ctx_init} {name}." for name in names])
            if not torch.equal(ids[:, 1 : 1 + self.n_ctx], init[: self.n_ctx].expand(len(names), -1)):
                raise ConfigError(
                    f"ctx_init {self.cfg.ctx_init!r} tokenises differently before some class names; "
                    'use ctx_init = "" (random init)'
                )
        else:
            raw = self.backbone.tokenize([f"{name}." for name in names])
            ids = torch.cat([raw[:, :1], raw.new_zeros(len(names), self.n_ctx), raw[:, 1:]], 1)
        eot = ids.argmax(dim=1)
        length = int(eot.max()) + 1  # causal attention: tokens after the last end-of-text change nothing
        if length > self.backbone.context_length:
            raise ConfigError(
                f"prompts are {length} tokens, longer than the model's {self.backbone.context_length}; "
                "shorten the class names or n_ctx"
            )
        ids = ids[:, :length].to(self.backbone.device)
        with torch.no_grad():
            embeds = token_embeddings(self.clip, ids)
        return ClassPrompts(list(names), ids, embeds.detach())

    def splice(self, classes: ClassPrompts, ctx: torch.Tensor) -> torch.Tensor:
        """Embeddings with ``ctx`` spliced in: ``(n, D)`` → ``(C, L, D)``, ``(B, n, D)`` → ``(B·C, L, D)``."""
        emb = classes.embeds
        n_cls, n = len(classes), ctx.shape[-2]
        if ctx.dim() == 2:
            return torch.cat([emb[:, :1], ctx.to(emb.dtype).expand(n_cls, -1, -1), emb[:, 1 + n :]], 1)
        batch = ctx.shape[0]
        prefix = emb[None, :, :1].expand(batch, -1, -1, -1)
        suffix = emb[None, :, 1 + n :].expand(batch, -1, -1, -1)
        middle = ctx.to(emb.dtype)[:, None].expand(-1, n_cls, -1, -1)
        return torch.cat([prefix, middle, suffix], 2).flatten(0, 1)

    def text_features(
        self, classes: ClassPrompts, ctx: torch.Tensor, deep_prompts: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Normalised class text features: ``(C, E)`` for ``ctx (n, D)``; ``(B, C, E)`` for ``(B, n, D)``.

        The start token and the context are the same for every class, so they form a shared prefix that the text
        encoder runs once per context, not once per class (:func:`~recorders.clip.encoders.shared_prefix_text_features`,
        equal to the full forward of the spliced prompts).
        """
        from recorders.clip.encoders import eot_positions, shared_prefix_text_features

        emb = classes.embeds
        start = 1 + ctx.shape[-2]
        contexts = ctx.to(emb.dtype) if ctx.dim() == 3 else ctx.to(emb.dtype)[None]
        prefix = torch.cat([emb[:1, :1].expand(len(contexts), -1, -1), contexts], 1)  # (B or 1, 1 + n, D)
        eot = eot_positions(self.clip, classes.input_ids) - start
        feats = shared_prefix_text_features(
            self.clip, prefix, emb[:, start:], eot, deep_prompts=deep_prompts, prompt_start=1
        )
        return F.normalize((feats if ctx.dim() == 3 else feats[0]).float(), dim=-1)

    def image_features(
        self, inputs: torch.Tensor, vision_prompts: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Normalised image features ``(B, E)`` from cached features, or from pixels with vision prompts."""
        if self.needs_pixels:
            from recorders.clip.encoders import image_features

            inputs = image_features(self.clip, inputs, vision_prompts=vision_prompts)
        return F.normalize(inputs.float(), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()

    # ------------------------------------------------------------------ gates
    def make_gate(
        self, n: int, kind: str, prompt: str = "", feature_dim: int | None = None, vector_dim: int = 0
    ) -> Gate | PlainScale:
        """A :class:`Gate`, or its variant: a :class:`PlainScale` (``param-matched``, starting at the gate's initial
        values) or a frozen gate (``always-frozen``).

        ``vector_dim``: the length of the vector each gate scales through :meth:`Gate.gated` (probes then record
        the exact gate/prompt gradient-ratio factors)."""
        gate = Gate(
            n,
            kind,
            init=self.cfg.gate_init,
            feature_dim=feature_dim,
            prompt=prompt,
            vector_dim=vector_dim,
            generator=self.generator,
        )
        if self.cfg.variant == "param-matched":
            return PlainScale(gate)
        gate.equilibrium = self.cfg.grad_equilibrium
        if self.cfg.variant == "always-frozen":
            gate.requires_grad_(False)
        return gate

    def gate_terms(self, values: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``entropy``: λ·mean binary entropy of the gate values when ``gate_entropy`` is set (gates only)."""
        if not self.cfg.gate_entropy or self.cfg.variant == "param-matched":
            return {}
        return {"entropy": self.cfg.gate_entropy * torch.stack([binary_entropy(v.float()) for v in values]).mean()}

    def gate_regularisers(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms that act on gate values directly, as a function of ``values`` (qualified gate module name
        → σ values ``(n,)`` or ``(B, n)``, every gate of the method). :meth:`forward` computes these terms with this
        function, and probes evaluate it on recorded gate values to split the gate gradient by loss term."""
        return self.gate_terms(list(values.values()))

    def gate_group_name(self) -> tuple[str, str]:
        """Group name and role that hold gate(-replacement) parameters under the current variant."""
        return ("matched", "other") if self.cfg.variant == "param-matched" else ("gates", "gate")

    # ------------------------------------------------------------------ parameters
    def groups(self) -> list[ParamGroup]:
        """Trainable parameter groups (frozen parameters left out), in a fixed order."""
        out = []
        for group in self._groups():
            trainable = [p for p in group.params if p.requires_grad]
            if trainable:
                out.append(ParamGroup(group.name, group.role, trainable))
        return out

    def _groups(self) -> list[ParamGroup]:
        """Every parameter group of the method, frozen parameters included."""
        raise NotImplementedError

    def prompt_params(self) -> dict[str, nn.Parameter]:
        """Token-level prompt parameters ``(n_tokens, D)`` by name (per-token gradients get recorded)."""
        raise NotImplementedError

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        """Large parameters whose full gradient is stored only every ``tensor_stride`` steps."""
        return {}

    def n_trainable(self) -> int:
        return sum(g.n_params for g in self.groups())

    @property
    def has_gates(self) -> bool:
        """Whether the model holds :class:`Gate` modules (the gated methods, except their ``param-matched`` form)."""
        return any(isinstance(module, Gate) for module in self.modules())

    def extra_losses(self) -> tuple[str, ...]:
        """Names of the loss terms :meth:`forward` may return besides ``ce`` (fixed per configuration)."""
        return ("entropy",) if self.has_gates and self.cfg.gate_entropy and self.cfg.variant != "param-matched" else ()

    def forward(self, inputs: torch.Tensor, classes: ClassPrompts) -> MethodOutput:
        raise NotImplementedError
