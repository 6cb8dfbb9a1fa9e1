"""``ws backbone ...``: build the built-in tiny CLIP and check that a backbone loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Build and check CLIP backbones (the built-in tiny CLIP, local checkpoints).", no_args_is_help=True
)


@app.command("pretrain")
def pretrain(
    out: Annotated[
        Path,
        typer.Option(help="Checkpoint directory to write (use it with `--backbone DIR`; the shipped one is builtin)."),
    ],
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the recipe's).")] = None,
    seconds: Annotated[float | None, typer.Option(min=0, help="Stop early after this many seconds.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the recipe (weights and data stream).")] = 0,
    batch_size: Annotated[int | None, typer.Option(min=2, help="Images (and captions) per step.")] = None,
    eval_images: Annotated[int | None, typer.Option(min=1, help="Zero-shot test images per class and domain.")] = None,
) -> None:
    """Pretrain the tiny CLIP on the built-in world and save it in the Hugging Face layout, with metrics.json."""
    from recorders.clip import pretrain as recipe
    from workstation.progress import RichProgress

    directory = out
    with RichProgress() as progress:
        metrics = recipe.pretrain(
            directory,
            steps=steps or recipe.DEFAULT_STEPS,
            seconds=seconds,
            seed=seed,
            batch_size=batch_size or recipe.BATCH_SIZE,
            eval_images=eval_images or recipe.EVAL_IMAGES,
            progress=progress,
        )
    accuracy = metrics["zero_shot"]
    typer.echo(
        f"saved {directory} ({metrics['checkpoint_bytes'] / 1e6:.1f} MB, {metrics['parameters']:,} "
        f"parameters, {metrics['steps']} steps in {metrics['train_seconds']:.0f} s)"
    )
    typer.echo(
        f"zero-shot accuracy ({len(recipe.CLASSES)}-way, chance {metrics['chance']:.3f}): "
        f"seen {accuracy['seen']:.3f}, held-out {accuracy['held_out']:.3f}"
    )
    typer.echo(
        f"downstream domain ({recipe.DOWNSTREAM_DOMAIN}): generic prompt {accuracy['downstream_generic']:.3f}, "
        f"matching prompt {accuracy['downstream_matched']:.3f}"
    )


@app.command("check")
def check(
    spec: Annotated[str, typer.Argument(help="builtin, a checkpoint directory, or a cached hub id.")] = "builtin",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Check that a backbone is usable for a run (offline): its preprocessor config, tokenizer files and weights
    load, and a prompt and an image go through it; print its widths, normalisation, fingerprint and, for the
    built-in, the shipped weights' SHA-256 and zero-shot metrics."""
    from recorders.clip.backbone import load_backbone, smoke_test

    backbone = load_backbone(spec, device=device)
    smoke_test(backbone)
    typer.echo(
        f"{backbone.name}: fingerprint {backbone.fingerprint}, device {backbone.device}, "
        f"autocast {backbone.autocast_dtype or 'off (float32)'}"
    )
    typer.echo(
        f"text width {backbone.text_width}, vision width {backbone.vision_width}, embed dim "
        f"{backbone.embed_dim}, context {backbone.context_length}, image {backbone.image_size} px, "
        f"mean {backbone.image_mean}, std {backbone.image_std}"
    )
    typer.echo("tokenizer, preprocessor config and weights load; a prompt and an image encode to finite features")
    if spec == "builtin":
        _print_builtin()


def _print_builtin() -> None:
    """The shipped checkpoint's weights hash (checked against the recorded one) and its recorded metrics."""
    import json

    from recorders.clip.backbone import BUILTIN_DIR, builtin_sha256
    from recorders.format.errors import DataError

    digest, expected = builtin_sha256()
    if digest != expected:
        raise DataError(
            f"the shipped built-in weights are damaged (SHA-256 {digest[:16]}…, expected {expected[:16]}…): "
            "reinstall ws"
        )
    typer.echo(f"shipped weights: {BUILTIN_DIR / 'model.safetensors'} sha256 {digest} (as shipped)")
    metrics = json.loads((BUILTIN_DIR / "metrics.json").read_text())
    accuracy = metrics["zero_shot"]
    typer.echo(
        f"zero-shot accuracy (recipe {metrics['recipe']}, seed {metrics['seed']}, {metrics['steps']} steps; "
        f"chance {metrics['chance']:.3f}): seen {accuracy['seen']:.3f}, held-out {accuracy['held_out']:.3f}, "
        f"downstream generic {accuracy['downstream_generic']:.3f} vs matched {accuracy['downstream_matched']:.3f}"
    )
