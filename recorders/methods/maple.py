"""MaPLe: deep multimodal prompts coupled from text to vision (Khattak et al., 2023).

Text prompts P^(d) ``(n_ctx, D_text)`` at layers d < J (J = ``prompt_depth``, clipped to the depth of both
encoders): P^(0) replaces the first ``n_ctx`` prompt tokens at the input ("a photo" of "a photo of a
{class}."), P^(d) replaces them at the input of text layer d. Vision prompts are f^(d)(P^(d)) with one Linear
coupling ``D_text → D_vision`` per layer, appended to the vision sequence at the input and replaced at layer
d. Trainable: J prompt sets and J couplings (ViT-B/16: 9·2·512 + 9·(512·768 + 768) ≈ 3.55M). Needs the full
vision forward (pixel inputs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recorders.methods.base import ClassPrompts, MethodOutput, ParamGroup, PromptMethod

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.config import MethodConfig


def prompt_depth(backbone: Backbone, requested: int) -> int:
    """J clipped to the number of layers of both encoders."""
    model = backbone.model
    return max(1, min(requested, len(model.text_model.encoder.layers), len(model.vision_model.encoder.layers)))


class MaPLe(PromptMethod):
    needs_pixels = True

    def __init__(self, backbone: Backbone, cfg: MethodConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        self.depth = prompt_depth(backbone, cfg.prompt_depth)
        width, vision = backbone.text_width, backbone.vision_width
        deep = [torch.randn(self.n_ctx, width, generator=generator) * 0.02 for _ in range(self.depth - 1)]
        self.prompts = nn.ParameterList([nn.Parameter(self.init_context()), *map(nn.Parameter, deep)])
        self.coupling = nn.ModuleList(nn.Linear(width, vision) for _ in range(self.depth))

    def encoder_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
        """Per layer d < J, the text prompts ``(n_ctx, D_text)`` and vision prompts ``(n_ctx, D_vision)`` the encoders
        receive, and the method's weighted loss terms. MaPLe: P^(d) and f^(d)(P^(d)), no terms."""
        text = list(self.prompts)
        return text, [f(p) for f, p in zip(self.coupling, text, strict=True)], {}

    def forward(self, inputs: torch.Tensor, classes: ClassPrompts) -> MethodOutput:
        text_prompts, vision_prompts, terms = self.encoder_prompts()
        image = self.image_features(inputs, vision_prompts)
        text = self.text_features(classes, text_prompts[0], text_prompts[1:] or None)
        return MethodOutput(self.logit_scale() * image @ text.T, terms)

    def _groups(self) -> list[ParamGroup]:
        return [
            ParamGroup("prompts", "prompt", list(self.prompts)),
            ParamGroup("coupling", "coupling", list(self.coupling.parameters())),
        ]

    def prompt_params(self) -> dict[str, nn.Parameter]:
        return {f"text{d}": p for d, p in enumerate(self.prompts)}

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        return {f"coupling.{k}": p for k, p in self.coupling.named_parameters()}
