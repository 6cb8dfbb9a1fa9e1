"""Evaluation: top-1 accuracy on the base and novel test classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recorders.format import harmonic_mean
from recorders.methods.base import ClassPrompts, PromptMethod
from recorders.train.config import Config
from recorders.train.inputs import TaskData, load_pixels


@dataclass
class Evaluation:
    """Accuracies in [0, 1] on the base and novel test classes."""

    base: float
    novel: float

    @property
    def hm(self) -> float:
        return harmonic_mean(self.base, self.novel)


@torch.no_grad()
def accuracy(method: PromptMethod, classes: ClassPrompts, data: TaskData, half: str, cfg: Config) -> float:
    """Top-1 accuracy in [0, 1] on the test items of ``half`` (``base`` or ``novel``)."""
    items = data.task.test_base if half == "base" else data.task.test_novel
    if not items:
        return float("nan")
    labels = torch.tensor([item.label for item in items])
    correct = 0
    for start in range(0, len(items), cfg.eval_batch_size):
        if half in data.test_inputs:
            inputs = data.test_inputs[half][start : start + cfg.eval_batch_size]
        else:
            inputs = load_pixels(
                method, items[start : start + cfg.eval_batch_size], data.task.dataset.load_image, None, cfg
            )
        with method.backbone.autocast():
            logits = method(inputs, classes).logits
        correct += int((logits.argmax(-1).cpu() == labels[start : start + len(inputs)]).sum())
    return correct / len(items)


def evaluate(method: PromptMethod, base: ClassPrompts, novel: ClassPrompts, data: TaskData, cfg: Config) -> Evaluation:
    method.eval()
    result = Evaluation(accuracy(method, base, data, "base", cfg), accuracy(method, novel, data, "novel", cfg))
    method.train()
    return result
