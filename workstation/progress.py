"""The rich progress bars ``ws`` draws for the training side's :class:`recorders.progress.Progress` reports."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

LABELS = {"train": "train", "features": "image features", "pretrain": "pretraining tiny CLIP"}


class RichProgress:
    """One transient bar per task (rate, ETA and the last ``loss`` reported); use as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[loss]}"),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, task: str, completed: int, total: int, **fields: float) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._bar.add_task(LABELS.get(task, task), total=total, rate="", loss="")
        shown: dict[str, Any] = {}
        if "loss" in fields:
            shown["loss"] = f"loss {fields['loss']:.4f}"
            speed = next(t.speed for t in self._bar.tasks if t.id == self._tasks[task])
            shown["rate"] = f"{speed:.1f}/s" if speed else ""
        self._bar.update(self._tasks[task], completed=completed, total=total, **shown)
        if completed >= total:
            self._bar.remove_task(self._tasks.pop(task))

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()
