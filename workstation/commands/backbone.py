"""`ws backbone ...` (being built: see the backbones issue)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Build and check CLIP backbones (the built-in tiny CLIP, local checkpoints).",
                  no_args_is_help=True)


@app.command("pretrain")
def pretrain() -> None:
    """Not available yet in this build."""
    from recorders.errors import WsError

    raise WsError("`ws backbone pretrain` is not available in this build yet")
