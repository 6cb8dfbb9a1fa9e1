"""Progress of long work (training, feature extraction, pretraining), reported to whoever asked for it.

The training side never draws anything: it calls a :class:`Progress` the caller supplies (``ws`` passes a rich
renderer, :class:`workstation.progress.RichProgress`; library use gets :func:`silent`). Standard library only.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """``progress(task, completed, total, **fields)``: ``task`` has done ``completed`` of ``total`` units.

    Called with growing ``completed`` for one ``task`` name (``"train"`` steps, ``"features"`` images,
    ``"pretrain"`` steps); ``completed == total`` ends the task. ``fields`` carry numbers to show (``loss``), sent
    only now and then, so callers never force a device sync per step.
    """

    def __call__(self, task: str, completed: int, total: int, **fields: float) -> None: ...


def silent(task: str, completed: int, total: int, **fields: float) -> None:
    """A :class:`Progress` that reports nothing."""
