"""What a method reads from a run's config: the prompt, gate and regulariser settings (standard library only).

The run :class:`~recorders.train.config.Config` (40 fields: data, optimiser, recording, ...) hands a method only
this, through :meth:`~recorders.train.config.Config.method_config`; field meanings are documented there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodConfig:
    """Prompt, gate and regulariser settings of one method instance."""

    n_ctx: int = 4  # learnable context tokens (per layer for the MaPLe family)
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02²)
    prompt_depth: int = 9  # MaPLe J: layers that receive prompts
    lambda_cyc: float = 1.0  # BiMaPLe cycle-consistency weight
    bimaple_init: str = "maple"  # maple: vision prompts and f_{V→L} bias 0 (starts as MaPLe) | random: N(0, 0.02²)
    lambda_sparse: float = 1e-3  # AdaptiveBiMaPLe L1 weight on gate values
    lambda_smooth: float = 1e-3  # AdaptiveBiMaPLe weight on squared differences of adjacent depth gates
    gate_init: str = "zero"  # zero | uniform | biased[:VALUE]
    grad_equilibrium: bool = False  # rescale gate gradients by α = 1/(σ'(g) + ε), capped
    gate_entropy: float = 0.0  # weight of the binary-entropy regulariser on gate values
    variant: str = "standard"  # standard | param-matched | always-frozen
