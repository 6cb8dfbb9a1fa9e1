"""BiMaPLe and AdaptiveBiMaPLe: MaPLe with a bidirectional coupling, and with length and depth gates.

BiMaPLe adds f_{V→L}^(d): ``D_vision → D_text`` per layer and the cycle loss
``cyc = λ_cyc · mean_{d, i} ‖f_{V→L}(f_{L→V}(P_i^(d))) − P_i^(d)‖²`` (squared L2 per token, averaged over
tokens and layers), so the vision prompts must keep the text prompts' information.

AdaptiveBiMaPLe gates each prompt token and each insertion depth: P̃_i^(d) = σ(h^(d))·σ(g_i^(d))·P_i^(d), and
the couplings read the gated prompts. Regularisers: ``sparse = λ_sparse·(mean σ(g) + mean σ(h))`` (L1 of
positive gate values), ``smooth = λ_smooth·mean_d (σ(h^(d+1)) − σ(h^(d)))²``. Under ``param-matched`` the
gates become plain scales and their regularisers are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recorders.methods.base import ParamGroup
from recorders.methods.maple import MaPLe

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.config import MethodConfig


class BiMaPLe(MaPLe):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        width, vision = backbone.text_width, backbone.vision_width
        self.coupling_back = nn.ModuleList(nn.Linear(vision, width) for _ in range(self.depth))

    def coupling_terms(self, text: list[torch.Tensor], vision: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        errors = [
            (back(v) - p).pow(2).sum(-1).mean() for back, v, p in zip(self.coupling_back, vision, text, strict=True)
        ]
        return {"cyc": self.cfg.lambda_cyc * torch.stack(errors).mean()}

    def extra_losses(self) -> tuple[str, ...]:
        return ("cyc", *super().extra_losses())

    def _groups(self) -> list[ParamGroup]:
        return [*super()._groups(), ParamGroup("coupling_back", "coupling", list(self.coupling_back.parameters()))]

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        return {
            **super().strided_tensors(),
            **{f"coupling_back.{k}": p for k, p in self.coupling_back.named_parameters()},
        }


class AdaptiveBiMaPLe(BiMaPLe):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        self.length_gates = nn.ModuleList(
            self.make_gate(self.n_ctx, "length", prompt=f"text{d}") for d in range(self.depth)
        )
        self.depth_gate = self.make_gate(self.depth, "depth")

    @property
    def matched(self) -> bool:
        return self.cfg.variant == "param-matched"

    def layer_prompts(self) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        depth = self.depth_gate()
        lengths = [gate() for gate in self.length_gates]
        prompts = [depth[d] * lengths[d][:, None] * p for d, p in enumerate(self.prompts)]
        if self.matched:
            return prompts, {}
        terms = {"sparse": self.cfg.lambda_sparse * (torch.cat(lengths).abs().mean() + depth.abs().mean())}
        diffs = depth[1:] - depth[:-1]
        terms["smooth"] = self.cfg.lambda_smooth * (diffs.pow(2).mean() if len(diffs) else depth.sum() * 0)
        return prompts, {**terms, **self.gate_terms([*lengths, depth])}

    def extra_losses(self) -> tuple[str, ...]:
        return (*super().extra_losses(), *(() if self.matched else ("sparse", "smooth")))

    def _groups(self) -> list[ParamGroup]:
        name, role = self.gate_group_name()
        length = [p for g in self.length_gates for p in g.parameters()]
        return [
            *super()._groups(),
            ParamGroup(f"length_{name}", role, length),
            ParamGroup(f"depth_{name}", role, list(self.depth_gate.parameters())),
        ]
