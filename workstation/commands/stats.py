"""`ws stats` (being built: see the issue that owns it)."""

from __future__ import annotations

from recorders.errors import WsError


def stats() -> None:
    """Not available yet in this build."""
    raise WsError("`ws stats` is not available in this build yet")
