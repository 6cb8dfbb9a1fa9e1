"""`ws view` (being built: see the issue that owns it)."""

from __future__ import annotations

from recorders.errors import WsError


def view() -> None:
    """Not available yet in this build."""
    raise WsError("`ws view` is not available in this build yet")
