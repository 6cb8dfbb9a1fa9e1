"""``ws record``: train a prompt-learning method on a frozen CLIP and record every step to one HDF5 file.

With no arguments: ``coop-gating`` on the built-in world and backbone, 16 shots, seed 1. Values come from the
method's reference preset, then ``--config FILE``, then ``--set key=value``, then the flags below. Everything is
checked before the recording is created; torch is imported only inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recorders.methods.registry import METHODS
from recorders.train.config import Config

_TRAIN = "Training"
_INTERVENE = "Interventions and variants"


def record(
    method: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(METHODS)} (default: {Config.method})",
            rich_help_panel=_TRAIN,
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="world, world-mixed, imagenet, caltech101, eurosat, imagefolder (default: world)",
            rich_help_panel=_TRAIN,
        ),
    ] = None,
    data_root: Annotated[
        str | None, typer.Option(help="Folder of the datasets (or $WS_DATA).", rich_help_panel=_TRAIN)
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="'builtin' or a local CLIP checkpoint directory.", rich_help_panel=_TRAIN)
    ] = None,
    shots: Annotated[
        int | None, typer.Option(help="Training images per base class (default: 16).", rich_help_panel=_TRAIN)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; 0 is valid (default: 1).", rich_help_panel=_TRAIN)
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the method's preset).", rich_help_panel=_TRAIN)
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default: the method's preset).", rich_help_panel=_TRAIN)
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Base learning rate (default: the method's preset).", rich_help_panel=_TRAIN)
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: auto).", rich_help_panel=_TRAIN)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Recording path (default: recordings/<method>-<dataset>-s<seed>-<time>.h5).", rich_help_panel=_TRAIN
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of config keys (see examples/).", rich_help_panel=_TRAIN)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set key=value (repeatable).", rich_help_panel=_TRAIN),
    ] = None,
    on_nan: Annotated[
        str | None,
        typer.Option(help="skip or stop on a non-finite loss/gradient (default: stop).", rich_help_panel=_TRAIN),
    ] = None,
    gate_lr_scale: Annotated[
        float | None, typer.Option(help="Multiply the gates' learning rate (e.g. 50).", rich_help_panel=_INTERVENE)
    ] = None,
    clip_grad: Annotated[
        float | None, typer.Option(help="Clip the global gradient norm (e.g. 1.0).", rich_help_panel=_INTERVENE)
    ] = None,
    gate_init: Annotated[
        str | None, typer.Option(help="zero, uniform or biased[:VALUE].", rich_help_panel=_INTERVENE)
    ] = None,
    grad_equilibrium: Annotated[
        bool,
        typer.Option(
            "--grad-equilibrium", help="Rescale gate gradients by min(1/(σ(1−σ)+1e-8), 10).", rich_help_panel=_INTERVENE
        ),
    ] = False,
    gate_entropy: Annotated[
        float | None, typer.Option(help="λ of the gate-entropy loss term.", rich_help_panel=_INTERVENE)
    ] = None,
    gate_weight_decay: Annotated[
        float | None,
        typer.Option(help="Weight decay of gate parameters (default: the global one).", rich_help_panel=_INTERVENE),
    ] = None,
    variant: Annotated[
        str | None, typer.Option(help="standard, param-matched or always-frozen.", rich_help_panel=_INTERVENE)
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Record the 10-second synthetic demo instead (no CLIP).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print trainable parameter counts and exit.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out file (never one another process holds).")
    ] = False,
) -> None:
    """Train a method on a frozen CLIP and record every step (gates, gradients, losses, evaluations)."""
    from rich.console import Console

    from recorders.train.config import build_config

    console = Console()
    if demo:
        from recorders.format.errors import ConfigError
        from recorders.format.writer import check_writable
        from recorders.train.demo import run_demo

        if seed is not None and not 0 <= seed < 2**32:
            raise ConfigError(f"--seed {seed} must be in [0, 4294967295] (numpy and torch seeds are 32-bit)")
        if out is not None:
            check_writable(out, overwrite=force)
        path = run_demo(out, seed=seed if seed is not None else 0, device=device or "cpu", overwrite=force)
        console.print(f"recording: {path}")
        return
    overrides = [
        ("method", method),
        ("dataset", dataset),
        ("data_root", data_root),
        ("backbone", backbone),
        ("shots", shots),
        ("seed", seed),
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("lr", lr),
        ("device", device),
        ("out", str(out) if out is not None else None),
        ("on_nan", on_nan),
        ("gate_lr_scale", gate_lr_scale),
        ("clip_grad", clip_grad),
        ("gate_init", gate_init),
        ("grad_equilibrium", True if grad_equilibrium else None),
        ("gate_entropy", gate_entropy),
        ("gate_weight_decay", gate_weight_decay),
        ("variant", variant),
    ]
    cfg = build_config(overrides, config_file=config, sets=set_ or ())
    if dry_run:
        _dry_run(cfg, console)
        return
    from recorders.train.loop import build_run, train
    from workstation.progress import RichProgress

    run = build_run(cfg, force=force)
    console.print(
        f"[bold]{cfg.method}[/] on {cfg.dataset} ({cfg.shots} shots, seed {cfg.seed}), "
        f"{run.method.n_trainable():,} trainable parameters, device {run.method.backbone.device}"
    )
    with RichProgress(console) as progress:
        result = train(run, progress=progress)
    console.print(f"recording: {result.path}")
    if result.before is not None:
        b = result.before
        console.print(f"before:  base {b.base:.2%}  novel {b.novel:.2%}  HM {b.hm:.2%}")
    a = result.after
    console.print(f"after:   base {a.base:.2%}  novel {a.novel:.2%}  HM {a.hm:.2%}  ({result.steps} steps)")
    console.print(f"gates: {result.gate_summary}")
    _print_verdict(result.path, console)


def _print_verdict(path: Path, console) -> None:  # noqa: ANN001 (a rich Console)
    """The recording's verdict per gate set with its evidence, one line per criterion (as ``ws inspect``)."""
    from rich.markup import escape

    from analyses.diagnostics import diagnose
    from recorders.format import Recording
    from workstation.commands.inspect import verdict_lines

    with Recording.open(path) as rec:
        d = diagnose(rec)
    best = d.best_eval
    if best is not None:
        console.print(
            f"best:    base {best['base_acc']:.2%}  novel {best['novel_acc']:.2%}  HM {best['hm']:.2%}  "
            f"(step {best['step']}, the best validation accuracy {best['val_acc']:.2%})",
            highlight=False,
        )
    for g in d.gate_sets.values():
        for line in verdict_lines(g):
            console.print(escape(line), highlight=False, soft_wrap=True)


def _dry_run(cfg, console) -> None:
    """Print the trainable parameter count per group and, for a gated method, the counts of the gated model and of
    both variants side by side."""
    from rich.table import Table

    from recorders.clip.backbone import load_backbone
    from recorders.train.config import GATED_METHODS, VARIANTS
    from recorders.train.loop import describe, variant_counterpart

    bb = load_backbone(cfg.backbone, cfg.device)
    groups = describe(cfg, bb)
    table = Table(title=f"{cfg.method} ({cfg.variant}) on {bb.name}: trainable parameters")
    for column in ("group", "role", "parameters"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for group in groups:
        table.add_row(group.name, group.role, f"{group.n_params:,}")
    total = sum(g.n_params for g in groups)
    table.add_row("total", "", f"{total:,}", end_section=True)
    console.print(table)
    if cfg.method in GATED_METHODS:
        variants = Table(title=f"{cfg.method}: trainable parameters per variant")
        for variant in VARIANTS:
            variants.add_column(("gated" if variant == "standard" else variant), justify="right")
        counts = [
            total if v == cfg.variant else sum(g.n_params for g in describe(variant_counterpart(cfg, v), bb))
            for v in VARIANTS
        ]
        variants.add_row(*(f"{n:,}" for n in counts))
        console.print(variants)
