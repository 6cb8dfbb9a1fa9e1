"""`ws plot` (being built: see the issue that owns it)."""

from __future__ import annotations

from recorders.errors import WsError


def plot() -> None:
    """Not available yet in this build."""
    raise WsError("`ws plot` is not available in this build yet")
