"""CoCoOp-gating: CoCoOp whose context tokens are scaled by instance-conditioned gates.

C̃_{b,i} = σ(w_i·x_b + c_i)·(C_i + π(x_b)) with x_b the normalised image feature, so every input gets its own
gate values; collapse shows as their variance across inputs going to ~0. Trainable: ``ctx``, the meta-net and
the gate's linear map ``(E → n_ctx)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recorders.methods.base import ParamGroup
from recorders.methods.cocoop import CoCoOp

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.config import MethodConfig


class CoCoOpGating(CoCoOp):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        self.gate = self.make_gate(
            self.n_ctx, "instance", prompt="ctx", feature_dim=backbone.embed_dim, vector_dim=backbone.text_width
        )

    def instance_context(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ctx, _ = super().instance_context(image)  # (B, n_ctx, D_text): the gated vector C_i + π(x_b)
        values = self.gate(image)  # (B, n_ctx)
        return self.gate.gated(values, ctx), self.gate_regularisers({"gate": values})

    def _groups(self) -> list[ParamGroup]:
        return [*super()._groups(), ParamGroup(*self.gate_group_name(), list(self.gate.parameters()))]

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        return {
            **super().strided_tensors(),
            **{f"gate.{k}": p for k, p in self.gate.named_parameters() if p.requires_grad},
        }
