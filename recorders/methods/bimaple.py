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

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from recorders.methods.maple import MaPLe

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.base import PlainScale
    from recorders.methods.gates import Gate
    from recorders.train.config import Config


class BiMaPLe(MaPLe):
    name = "bimaple"

    def __init__(self, backbone: Backbone, cfg: Config, generator: torch.Generator | None = None) -> None:
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

    def _groups(self) -> list[tuple[str, str, list[nn.Parameter]]]:
        return [*super()._groups(), ("coupling_back", "coupling", list(self.coupling_back.parameters()))]

    def strided_tensors(self) -> dict[str, nn.Parameter]:
        return {
            **super().strided_tensors(),
            **{f"coupling_back.{k}": p for k, p in self.coupling_back.named_parameters()},
        }


class AdaptiveBiMaPLe(BiMaPLe):
    name = "adaptive-bimaple"
    gated = True

    def __init__(self, backbone: Backbone, cfg: Config, generator: torch.Generator | None = None) -> None:
        super().__init__(backbone, cfg, generator)
        width = backbone.text_width
        self.length_gates = nn.ModuleList(
            self.make_gate(self.n_ctx, "length", prompt=f"text{d}", vector_dim=width) for d in range(self.depth)
        )
        self.depth_gate = self.make_gate(self.depth, "depth", vector_dim=self.n_ctx * width)

    @property
    def matched(self) -> bool:
        return self.cfg.variant == "param-matched"

    def layer_prompts(self) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        depth = self.depth_gate()
        lengths = [gate() for gate in self.length_gates]
        gates = cast("list[Gate | PlainScale]", list(self.length_gates))
        tokens = [gate.gated(v, p) for gate, v, p in zip(gates, lengths, self.prompts, strict=True)]
        prompts = list(self.depth_gate.gated(depth, torch.stack(tokens)).unbind(0))
        values = {f"length_gates.{d}": v for d, v in enumerate(lengths)} | {"depth_gate": depth}
        return prompts, self.gate_regularisers(values)

    def gate_regularisers(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``sparse`` and ``smooth`` (module docstring) and ``entropy`` from the gate values by module name."""
        if self.matched:
            return {}
        lengths = [values[f"length_gates.{d}"] for d in range(self.depth)]
        depth = values["depth_gate"]
        terms = {"sparse": self.cfg.lambda_sparse * (torch.cat(lengths).abs().mean() + depth.abs().mean())}
        diffs = depth[1:] - depth[:-1]
        terms["smooth"] = self.cfg.lambda_smooth * (diffs.pow(2).mean() if len(diffs) else depth.sum() * 0)
        return {**terms, **self.gate_terms([*lengths, depth])}

    def extra_losses(self) -> tuple[str, ...]:
        return (*super().extra_losses(), *(() if self.matched else ("sparse", "smooth")))

    def _groups(self) -> list[tuple[str, str, list[nn.Parameter]]]:
        name, role = self.gate_group_name()
        length = [p for g in self.length_gates for p in g.parameters()]
        return [
            *super()._groups(),
            (f"length_{name}", role, length),
            (f"depth_{name}", role, list(self.depth_gate.parameters())),
        ]
