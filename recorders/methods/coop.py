"""CoOp: ``n_ctx`` learned context vectors replace "a photo of a" before every class name (Zhou et al., 2022).

Trainable: ``ctx`` ``(n_ctx, D_text)``. Image features come from the frozen encoder (cacheable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recorders.methods.base import ClassPrompts, MethodOutput, ParamGroup, PromptMethod

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.config import MethodConfig


class CoOp(PromptMethod):
    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        self.ctx = nn.Parameter(self.init_context())

    def context(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The context fed to the text encoder ``(n_ctx, D_text)`` and any regulariser terms."""
        return self.ctx, {}

    def forward(self, inputs: torch.Tensor, classes: ClassPrompts) -> MethodOutput:
        image = self.image_features(inputs)
        ctx, terms = self.context()
        text = self.text_features(classes, ctx)
        return MethodOutput(self.logit_scale() * image @ text.T, terms)

    def logits_for_contexts(self, inputs: torch.Tensor, classes: ClassPrompts, contexts: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, C)`` of ``inputs`` against ``classes`` with each of ``contexts`` ``(K, n_ctx, D_text)`` in
        place of :meth:`context`'s, from one text-encoder pass for all K (:meth:`forward`'s logits are those of
        ``context()``'s alone): the text side depends on the parameters only through the context."""
        image = self.image_features(inputs)
        text = self.text_features(classes, contexts)  # (K, C, E)
        return self.logit_scale() * image @ text.transpose(1, 2)

    def _groups(self) -> list[ParamGroup]:
        return [ParamGroup("ctx", "prompt", [self.ctx])]

    def prompt_params(self) -> dict[str, nn.Parameter]:
        return {"ctx": self.ctx}
