"""Constants shared by the backbone loader and the pretraining recipe (standard library only, no cycle).

``CLIP_MEAN``/``CLIP_STD`` are CLIP's per-channel normalisation (RGB in [0, 1]); ``RECIPE_VERSION`` names the
built-in tiny CLIP's recipe, bumped whenever the recipe, its config or the world's renderer changes.
"""

from __future__ import annotations

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RECIPE_VERSION = "v3"
