"""Where ws keeps derived data on disk; the one home for cache locations (standard library only).

Everything lives under :func:`cache_home`: ``$WS_CACHE`` when set, else ``~/.cache/ws``. Recordings are not cached
data: they go to :data:`recorders.format.RECORDINGS_DIR` (relative to the working directory) or ``--out``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The cache root: ``$WS_CACHE``, else ``~/.cache/ws``."""
    return Path(os.environ.get("WS_CACHE") or Path.home() / ".cache" / "ws").expanduser()


def features_dir() -> Path:
    """Cached frozen image features (``<kind>-<key>.npy``)."""
    return cache_home() / "features"
