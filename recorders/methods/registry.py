"""``--method`` name → method class: one explicit table, the only list of method names in ws.

Importing this module is torch-free (the config and the CLI read :data:`METHODS`); a method's class is imported
when it is built. No registration by import side effects.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from recorders.clip.backbone import Backbone
    from recorders.methods.base import PromptMethod
    from recorders.methods.config import MethodConfig


class MethodRequest(Protocol):
    """What building a method needs from a run's config (:class:`~recorders.train.config.Config` is one)."""

    @property
    def method(self) -> str: ...
    @property
    def seed(self) -> int: ...
    def method_config(self) -> MethodConfig: ...


@dataclass(frozen=True)
class MethodEntry:
    """Where a method's class lives (``recorders.methods.<module>.<cls>``) and whether it has sigmoid gates."""

    module: str
    cls: str
    gated: bool


REGISTRY: dict[str, MethodEntry] = {
    "coop": MethodEntry("coop", "CoOp", gated=False),
    "cocoop": MethodEntry("cocoop", "CoCoOp", gated=False),
    "maple": MethodEntry("maple", "MaPLe", gated=False),
    "bimaple": MethodEntry("bimaple", "BiMaPLe", gated=False),
    "adaptive-bimaple": MethodEntry("bimaple", "AdaptiveBiMaPLe", gated=True),
    "coop-gating": MethodEntry("coop_gating", "CoOpGating", gated=True),
    "cocoop-gating": MethodEntry("cocoop_gating", "CoCoOpGating", gated=True),
}
METHODS: tuple[str, ...] = tuple(REGISTRY)
GATED_METHODS: tuple[str, ...] = tuple(name for name, entry in REGISTRY.items() if entry.gated)


def method_class(name: str) -> type[PromptMethod]:
    """The class of method ``name`` (one of :data:`METHODS`)."""
    entry = REGISTRY[name]
    return getattr(importlib.import_module(f"recorders.methods.{entry.module}"), entry.cls)


def build_method(cfg: MethodRequest, backbone: Backbone) -> PromptMethod:
    """The method ``cfg.method`` on ``backbone``, its parameters on the backbone's device.

    Random initialisation draws from a CPU generator seeded with ``cfg.seed``: reproducible on any device.
    """
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    return method_class(cfg.method)(backbone, cfg.method_config(), generator).to(backbone.device)
