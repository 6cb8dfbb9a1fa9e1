"""CoOp-gating: CoOp with one sigmoid gate per context token, C̃_i = σ(g_i)·C_i, L_eff = Σ_i σ(g_i).

Trainable: ``ctx`` ``(n_ctx, D_text)`` and the length gate's logits ``(n_ctx,)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from recorders.methods.base import ParamGroup
from recorders.methods.coop import CoOp

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.config import MethodConfig


class CoOpGating(CoOp):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        self.gate = self.make_gate(self.n_ctx, "length", prompt="ctx", vector_dim=backbone.text_width)

    def context(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.gate()
        return self.gate.gated(values, self.ctx), self.gate_regularisers({"gate": values})

    def _groups(self) -> list[ParamGroup]:
        return [*super()._groups(), ParamGroup(*self.gate_group_name(), list(self.gate.parameters()))]
