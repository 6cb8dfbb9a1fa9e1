"""BiMaPLe and AdaptiveBiMaPLe: deep prompts on both encoders, translated both ways, with length and depth gates.

BiMaPLe keeps, per layer d < J, text prompts P_t^(d) ``(n_ctx, D_text)`` and vision prompts P_v^(d)
``(n_ctx, D_vision)``, and two per-layer linear mappings f_{L→V}^(d): ``D_text → D_vision`` (``coupling``, MaPLe's)
and f_{V→L}^(d): ``D_vision → D_text`` (``coupling_back``). Each encoder receives its own prompts plus the other
side's translated prompts (the *bimodal prompts*)::

    P̂_t^(d) = P_t^(d) + f_{V→L}^(d)(P_v^(d))        P̂_v^(d) = P_v^(d) + f_{L→V}^(d)(P_t^(d))

placed where MaPLe places its text and vision prompts. The cycle loss ties the two mappings on the own prompts,
``cyc = λ_cyc · mean_d [mean_i ‖f_{V→L}(f_{L→V}(P_t,i)) − P_t,i‖² + mean_i ‖f_{L→V}(f_{V→L}(P_v,i)) − P_v,i‖²]``.
Initialisation (``bimaple_init``): ``maple`` (default) sets P_v = 0 and the bias of f_{V→L} to 0, so BiMaPLe starts
exactly where MaPLe starts (P̂_t = P_t, P̂_v = f_{L→V}(P_t)); ``random`` draws P_v from N(0, 0.02²) and keeps
PyTorch's Linear init for f_{V→L}. Trainable: ``prompts`` J·n·D, ``vision_prompts`` J·n·V, ``coupling`` J·(D·V + V),
``coupling_back`` J·(V·D + D).

AdaptiveBiMaPLe gates token i of layer d on both sides with one length gate σ(g_i^(d)) and one depth gate σ(h^(d)).
Let B^(d) = [P̂_t^(d) ‖ P̂_v^(d)] ``(n_ctx, D_text + D_vision)`` (the bimodal prompts, concatenated per token):

    B̃^(d) = σ(h^(d)) · (σ(g^(d))[:, None] · B^(d)),  then split back into the text and vision prompts.

So the length gate set ``length_gates.d`` scales the rows of B^(d) and the depth gate ``depth_gate`` (entry d)
scales σ(g^(d))·B^(d); each token's whole bimodal prompt, coupling biases included, goes to zero as either σ → 0
and then carries nothing of P_t, P_v or the mappings into either encoder (the slot stays, as the zero vector). One
gate value serves both sides, so L_eff^(d) = Σ_i σ(g_i^(d)) and the depth profile σ(h) are the same for the text and
the vision encoder. The cycle loss reads the ungated own prompts. Regularisers: ``sparse = λ_sparse·(mean |s_len| +
mean |s_depth|)`` (L1 of the gate values), ``smooth = λ_smooth·mean_d (s_depth^(d+1) − s_depth^(d))²``. Under
``param-matched`` the gates become :class:`~recorders.methods.base.PlainScale` modules (same count, no sigmoid,
the same values at step 0) and the same two regularisers act on their values, so the matched model starts at the
gated model's loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from recorders.methods.base import ParamGroup
from recorders.methods.maple import MaPLe

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.base import PlainScale
    from recorders.methods.config import MethodConfig
    from recorders.methods.gates import Gate


class BiMaPLe(MaPLe):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        width, vision = backbone.text_width, backbone.vision_width
        backs = [nn.Linear(vision, width) for _ in range(self.depth)]
        self.coupling_back = nn.ModuleList(backs)
        if cfg.bimaple_init == "maple":
            own = [torch.zeros(self.n_ctx, vision) for _ in range(self.depth)]
            with torch.no_grad():
                for back in backs:
                    back.bias.zero_()
        else:
            own = [torch.randn(self.n_ctx, vision, generator=generator) * 0.02 for _ in range(self.depth)]
        self.vision_prompts = nn.ParameterList(map(nn.Parameter, own))

    def bimodal_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        """P̂_t^(d) ``(n_ctx, D_text)`` and P̂_v^(d) ``(n_ctx, D_vision)`` per layer, and the weighted ``cyc`` term."""
        text, vision, errors = [], [], []
        for p_t, p_v, to_vision, to_text in zip(
            self.prompts, self.vision_prompts, self.coupling, self.coupling_back, strict=True
        ):
            translated_t, translated_v = to_vision(p_t), to_text(p_v)
            text.append(p_t + translated_v)
            vision.append(p_v + translated_t)
            there_and_back = (to_text(translated_t) - p_t).pow(2).sum(-1).mean()
            back_and_there = (to_vision(translated_v) - p_v).pow(2).sum(-1).mean()
            errors.append(there_and_back + back_and_there)
        return text, vision, {"cyc": self.cfg.lambda_cyc * torch.stack(errors).mean()}

    def encoder_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        return self.bimodal_prompts()

    def extra_losses(self) -> tuple[str, ...]:
        return ("cyc", *super().extra_losses())

    def _groups(self) -> list[ParamGroup]:
        return [
            *super()._groups(),
            ParamGroup("vision_prompts", "prompt", list(self.vision_prompts)),
            ParamGroup("coupling_back", "coupling", list(self.coupling_back.parameters())),
        ]

    def prompt_params(self) -> dict[str, nn.Parameter]:
        return {**super().prompt_params(), **{f"vision{d}": p for d, p in enumerate(self.vision_prompts)}}

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        return {
            **super().strided_tensors(),
            **{f"coupling_back.{k}": p for k, p in self.coupling_back.named_parameters()},
        }


class AdaptiveBiMaPLe(BiMaPLe):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        bimodal_width = backbone.text_width + backbone.vision_width
        # prompt="": the gated vector B^(d) is built in the forward pass; the probe reads it through gate.gated()
        self.length_gates = nn.ModuleList(
            self.make_gate(self.n_ctx, "length", vector_dim=bimodal_width) for _ in range(self.depth)
        )
        self.depth_gate = self.make_gate(self.depth, "depth", vector_dim=self.n_ctx * bimodal_width)

    @property
    def matched(self) -> bool:
        return self.cfg.variant == "param-matched"

    def encoder_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        text, vision, terms = self.bimodal_prompts()
        depth = self.depth_gate()
        lengths = [gate() for gate in self.length_gates]
        gates = cast("list[Gate | PlainScale]", list(self.length_gates))
        bimodal = [torch.cat([p_t, p_v], -1) for p_t, p_v in zip(text, vision, strict=True)]  # B^(d), both sides
        tokens = [gate.gated(v, b) for gate, v, b in zip(gates, lengths, bimodal, strict=True)]  # σ(g_i)·B_i
        gated = self.depth_gate.gated(depth, torch.stack(tokens))  # σ(h^(d))·σ(g_i^(d))·B_i^(d): (depth, n, Dt+Dv)
        width = self.backbone.text_width
        values = {f"length_gates.{d}": v for d, v in enumerate(lengths)} | {"depth_gate": depth}
        terms.update(self.gate_regularisers(values))
        return list(gated[..., :width].unbind(0)), list(gated[..., width:].unbind(0)), terms

    def gate_regularisers(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``sparse`` and ``smooth`` (module docstring) and ``entropy`` from the gate values by module name."""
        lengths = [values[f"length_gates.{d}"] for d in range(self.depth)]
        depth = values["depth_gate"]
        terms = {"sparse": self.cfg.lambda_sparse * (torch.cat(lengths).abs().mean() + depth.abs().mean())}
        diffs = depth[1:] - depth[:-1]
        terms["smooth"] = self.cfg.lambda_smooth * (diffs.pow(2).mean() if len(diffs) else depth.sum() * 0)
        return {**terms, **self.gate_terms([*lengths, depth])}

    def extra_losses(self) -> tuple[str, ...]:
        return (*super().extra_losses(), "sparse", "smooth")

    def _groups(self) -> list[ParamGroup]:
        name, role = self.gate_group_name()
        length = [p for g in self.length_gates for p in g.parameters()]
        return [
            *super()._groups(),
            ParamGroup(f"length_{name}", role, length),
            ParamGroup(f"depth_{name}", role, list(self.depth_gate.parameters())),
        ]
