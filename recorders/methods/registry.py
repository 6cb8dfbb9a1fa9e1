"""``--method`` name → method class: an explicit table (no registration by import side effects)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from recorders.methods.base import PromptMethod
from recorders.methods.bimaple import AdaptiveBiMaPLe, BiMaPLe
from recorders.methods.cocoop import CoCoOp
from recorders.methods.cocoop_gating import CoCoOpGating
from recorders.methods.coop import CoOp
from recorders.methods.coop_gating import CoOpGating
from recorders.methods.maple import MaPLe
from recorders.train.config import Config

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone

METHODS: dict[str, type[PromptMethod]] = {
    "coop": CoOp,
    "cocoop": CoCoOp,
    "maple": MaPLe,
    "bimaple": BiMaPLe,
    "adaptive-bimaple": AdaptiveBiMaPLe,
    "coop-gating": CoOpGating,
    "cocoop-gating": CoCoOpGating,
}


def build_method(cfg: Config, backbone: Backbone) -> PromptMethod:
    """The method ``cfg.method`` on ``backbone``, its parameters on the backbone's device.

    Random initialisation draws from a CPU generator seeded with ``cfg.seed``: reproducible on any device.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    return METHODS[cfg.method](backbone, cfg, generator).to(backbone.device)
