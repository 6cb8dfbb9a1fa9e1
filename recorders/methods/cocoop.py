"""CoCoOp: a meta-net maps each image feature to a bias π added to every context vector (Zhou et al., 2022).

Meta-net: Linear(E → E/16), ReLU, Linear(E/16 → D_text) on the normalised image feature. Each image gets its
own prompts, so the text encoder sees ``B × C`` prompts per batch — encoded in ONE batched forward, not a
Python loop over images as in the reference. Trainable: ``ctx`` ``(n_ctx, D_text)`` and the meta-net.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recorders.methods.base import ClassPrompts, MethodOutput, ParamGroup, PromptMethod

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.config import MethodConfig


class CoCoOp(PromptMethod):
    text_per_input = True

    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        self.ctx = nn.Parameter(self.init_context())
        embed, width = backbone.embed_dim, backbone.text_width
        hidden = max(1, embed // 16)
        self.meta_net = nn.Sequential(nn.Linear(embed, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))

    def instance_context(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-image context ``(B, n_ctx, D_text)`` from normalised image features ``(B, E)``, and terms."""
        return self.ctx[None] + self.meta_net(image)[:, None], {}

    def forward(self, inputs: torch.Tensor, classes: ClassPrompts) -> MethodOutput:
        image = self.image_features(inputs)
        ctx, terms = self.instance_context(image)
        text = self.text_features(classes, ctx)  # (B, C, E), one batched text forward
        return MethodOutput(self.logit_scale() * torch.einsum("be,bce->bc", image, text), terms)

    def _groups(self) -> list[ParamGroup]:
        return [
            ParamGroup("ctx", "prompt", [self.ctx]),
            ParamGroup("meta_net", "meta", list(self.meta_net.parameters())),
        ]

    def prompt_params(self) -> dict[str, nn.Parameter]:
        return {"ctx": self.ctx}

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        return {f"meta_net.{k}": p for k, p in self.meta_net.named_parameters()}
