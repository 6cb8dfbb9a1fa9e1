"""Evaluation: top-1 accuracy on the base and novel test classes, the validation split and the counterfactuals.

Besides the trained model, every evaluation of a gated method scores the same model with its gates replaced
(:data:`COUNTERFACTUALS`): ``mean`` holds every instance gate at its mean value over the test images (input
dependence removed; static gates keep their value, so the counterfactual is evaluated only with instance gates),
``init`` computes the gates with their parameters from before training (the learned gate movement removed),
``open`` removes the gates (σ = 1: the fixed-prompt counterpart with the learned prompts). The per-image
correctness of each model is kept for paired tests (:mod:`analyses.verdict`), test images in the order base then
novel. Instance gates also report their values over the test images: per gate the mean and the standard deviation
across images, and the spread of the per-class and per-domain means (standard deviation across groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from recorders.data.types import Item
from recorders.format import harmonic_mean
from recorders.methods.base import ClassPrompts, PromptMethod
from recorders.methods.coop import CoOp
from recorders.methods.gates import (
    Gate,
    Replacement,
    constant_values,
    find_gates,
    initial_replacement,
    replaced_gates,
)
from recorders.train.config import Config
from recorders.train.inputs import TaskData, load_pixels

COUNTERFACTUALS = ("mean", "init", "open")


@dataclass
class Evaluation:
    """Accuracies in [0, 1] on the base and novel test classes (and the validation split, NaN if not scored).

    ``correct``: per model (``trained`` and each counterfactual evaluated) a ``(n_base + n_novel,)`` bool array,
    True where the top-1 prediction is right. ``gate_stats``: per instance gate set, ``mean``, ``std``,
    ``class_std`` and ``domain_std`` of σ over the test images, each ``(n_gates,)``.
    """

    base: float
    novel: float
    val: float = math.nan
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    gate_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    n_base: int = 0

    @property
    def hm(self) -> float:
        return harmonic_mean(self.base, self.novel)

    def accuracies(self, model: str) -> tuple[float, float, float]:
        """(base, novel, HM) of ``model`` from its per-image correctness."""
        right = self.correct[model]
        base, novel = float(right[: self.n_base].mean()), float(right[self.n_base :].mean())
        return base, novel, harmonic_mean(base, novel)


@torch.no_grad()
def predictions(
    method: PromptMethod,
    classes: ClassPrompts,
    items: list[Item],
    inputs: torch.Tensor | None,
    cfg: Config,
    load_image: Callable[[Item], Image.Image],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-item correctness ``(n,)`` bool and, per instance gate, its values ``(n, n_gates)`` on these items.

    ``inputs`` are the held test inputs of the items (features or pixels), or None to load pixels per batch
    with ``load_image``.
    """
    labels = np.array([item.label for item in items])
    gates = {name: g for name, g in find_gates(method).items() if g.kind == "instance"}
    values: dict[str, list[torch.Tensor]] = {name: [] for name in gates}
    hooks = [g.register_forward_hook(_keep(values[name])) for name, g in gates.items()]
    right = []
    one_call = inputs is not None and not method.needs_pixels and not method.text_per_input
    size = max(len(items), 1) if one_call else cfg.eval_batch_size
    try:
        for start in range(0, len(items), size):
            if inputs is not None:
                batch = inputs[start : start + size]
            else:
                batch = load_pixels(method, items[start : start + size], load_image, None, cfg)
            with method.backbone.autocast():
                logits = method(batch, classes).logits
            right.append(logits.argmax(-1).cpu().numpy() == labels[start : start + len(batch)])
    finally:
        for hook in hooks:
            hook.remove()
    correct = np.concatenate(right) if right else np.zeros(0, bool)
    return correct, {name: torch.cat(v).float().cpu().numpy() for name, v in values.items() if v}


def _keep(store: list[torch.Tensor]):  # noqa: ANN202 - a torch forward hook
    def hook(module: Gate, args: tuple, output: torch.Tensor) -> None:
        if output.dim() == 2:
            store.append(output.detach())

    return hook


def accuracy(method: PromptMethod, classes: ClassPrompts, data: TaskData, half: str, cfg: Config) -> float:
    """Top-1 accuracy in [0, 1] on the test items of ``half`` (``base`` or ``novel``)."""
    items = data.task.test_base if half == "base" else data.task.test_novel
    if not items:
        return float("nan")
    load = data.task.dataset.load_image
    return float(predictions(method, classes, items, data.test_inputs.get(half), cfg, load)[0].mean())


def evaluate(
    method: PromptMethod,
    base: ClassPrompts,
    novel: ClassPrompts,
    data: TaskData,
    cfg: Config,
    initial: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Evaluation:
    """Score the trained model on test base/novel and validation, then each counterfactual (gated methods).

    ``initial``: the gates' parameters before training (:func:`~recorders.methods.gates.gate_states`); without
    it the ``init`` counterfactual is skipped.
    """
    method.eval()
    task = data.task
    try:
        correct, values, val = _test_predictions(
            method, base, novel, data, cfg, with_val=bool(task.val), initial=initial
        )
        n_base = len(task.test_base)
        right = correct["trained"]
        result = Evaluation(_mean(right[:n_base]), _mean(right[n_base:]), correct=correct, n_base=n_base)
        if val is not None:
            result.val = _mean(val)
        result.gate_stats = {name: group_spreads(v, task.test_base + task.test_novel) for name, v in values.items()}
    finally:
        method.train()
    return result


def counterfactuals(
    gates: Mapping[str, Gate],
    values: Mapping[str, np.ndarray],
    initial: Mapping[str, Mapping[str, torch.Tensor]] | None,
) -> dict[str, dict[str, Replacement]]:
    """The replacements of each counterfactual that applies (see the module docstring); ``values``: instance
    gate values over the test images ``(n, n_gates)`` by gate name."""
    if not gates:
        return {}
    out: dict[str, dict[str, Replacement]] = {}
    if values:
        out["mean"] = {name: constant_values(gates[name], torch.from_numpy(v.mean(0))) for name, v in values.items()}
    if initial is not None:
        out["init"] = {name: initial_replacement(g, initial[name]) for name, g in gates.items()}
    out["open"] = {name: constant_values(g, torch.ones(g.n_gates)) for name, g in gates.items()}
    return out


def counterfactual_kinds(method: PromptMethod) -> tuple[str, ...]:
    """The counterfactuals :func:`evaluate` runs for ``method`` (with the initial gate state given)."""
    gates = find_gates(method)
    if not gates:
        return ()
    instance = any(g.kind == "instance" for g in gates.values())
    return tuple(k for k in COUNTERFACTUALS if k != "mean" or instance)


def group_spreads(values: np.ndarray, items: list[Item]) -> dict[str, np.ndarray]:
    """Per gate: mean and std of σ over images, and the std across classes / domains of the group means.

    ``values``: ``(n, n_gates)`` gate values of ``items`` (same order). ``domain_std`` is NaN when the items carry
    no domain (world keys ``world:<class>:<domain>:<index>`` do) or only one domain is present.
    """
    v = values.astype(np.float64)
    out = {"mean": v.mean(0), "std": v.std(0)}
    out["class_std"] = _group_std(v, [item.classname for item in items])
    out["domain_std"] = _group_std(v, [item_domain(item) for item in items])
    return out


def item_domain(item: Item) -> str:
    """The visual domain of a world item (``""`` for other datasets)."""
    parts = item.key.split(":")
    return parts[2] if parts[0] == "world" and len(parts) == 4 else ""


def _group_std(v: np.ndarray, groups: list[str]) -> np.ndarray:
    names = sorted(set(groups))
    if len(names) < 2 or "" in names:
        return np.full(v.shape[1], np.nan)
    index = np.array([names.index(g) for g in groups])
    means = np.stack([v[index == i].mean(0) for i in range(len(names))])
    return means.std(0)


def _test_predictions(
    method: PromptMethod,
    base: ClassPrompts,
    novel: ClassPrompts,
    data: TaskData,
    cfg: Config,
    with_val: bool = False,
    initial: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """Per model (``trained`` and each counterfactual of :func:`counterfactuals` with ``initial``) the correctness of
    the test images ``(n_base + n_novel,)``; the trained model's instance gate values on them ``(n, n_gates)`` by gate
    name; and its correctness on the validation images when ``with_val`` (else None)."""
    task = data.task
    held = data.test_inputs
    halves = [(task.test_base, held.get("base"), True), (task.test_novel, held.get("novel"), False)]
    if with_val:
        halves.append((task.val, held.get("val"), True))
    gates = find_gates(method)
    if _one_forward(method, gates, halves):
        variants = {"trained": {}, **counterfactuals(gates, {}, initial)}
        sets = [(items, x, is_base) for items, x, is_base in halves if x is not None]
        per_set = _joint_correct(method, base, novel, sets, variants)
        val = per_set["trained"][2] if with_val else None
        return {kind: np.concatenate(right[:2]) for kind, right in per_set.items()}, {}, val
    right, values, val = _predictions_per_set(method, base, novel, data, cfg, with_val)
    correct = {"trained": right}
    for kind, replacements in counterfactuals(gates, values, initial).items():
        with replaced_gates(method, replacements):
            correct[kind] = _predictions_per_set(method, base, novel, data, cfg)[0]
    return correct, values, val


def _predictions_per_set(
    method: PromptMethod, base: ClassPrompts, novel: ClassPrompts, data: TaskData, cfg: Config, with_val: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Correctness of the test images ``(n_base + n_novel,)``, instance gate values on them ``(n, n_gates)`` by
    gate name, and correctness of the validation images when ``with_val`` (else None), scoring each image set
    against its own half's classes with :func:`predictions`."""
    task, held = data.task, data.test_inputs
    load = task.dataset.load_image
    rb, vb = predictions(method, base, task.test_base, held.get("base"), cfg, load)
    rn, vn = predictions(method, novel, task.test_novel, held.get("novel"), cfg, load)
    values = {name: np.concatenate([vb[name], vn[name]]) for name in vb.keys() & vn.keys()}
    val = predictions(method, base, task.val, held.get("val"), cfg, load)[0] if with_val else None
    return np.concatenate([rb, rn]), values, val


def _one_forward(
    method: PromptMethod, gates: Mapping[str, Gate], halves: list[tuple[list[Item], torch.Tensor | None, bool]]
) -> TypeGuard[CoOp]:
    """Whether every image set can be scored in one forward pass: a CoOp-family method (one context for every input,
    the only place its ``gates`` act), held features for each (non-empty) set, and no instance gate."""
    if not isinstance(method, CoOp) or method.needs_pixels or method.text_per_input:
        return False
    if any(g.kind == "instance" for g in gates.values()):
        return False
    return all(items and x is not None and len(x) == len(items) for items, x, _ in halves)


@torch.no_grad()
def _joint_correct(
    method: CoOp,
    base: ClassPrompts,
    novel: ClassPrompts,
    sets: list[tuple[list[Item], torch.Tensor, bool]],
    variants: Mapping[str, Mapping[str, Replacement]],
) -> dict[str, list[np.ndarray]]:
    """Per model of ``variants`` (its gate replacements by gate name; ``{}`` for the trained model) and per image set
    ``(items, held inputs, scored against the base classes?)``, the correctness ``(n,)`` bool.

    Each model's context is taken with its replacements in place; one text-encoder pass encodes the base and novel
    classes together under every context (:meth:`~recorders.methods.coop.CoOp.logits_for_contexts`) and one matmul
    scores every image against them, each image's argmax taken over its own half's columns: the text encoder runs
    once per evaluation instead of once per model, image set and half."""
    classes = _joined(base, novel)
    contexts = []
    for replacements in variants.values():
        with replaced_gates(method, replacements):
            contexts.append(method.context()[0])
    with method.backbone.autocast():
        logits = method.logits_for_contexts(torch.cat([x for _, x, _ in sets]), classes, torch.stack(contexts))
    out: dict[str, list[np.ndarray]] = {kind: [] for kind in variants}
    start = 0
    for items, x, is_base in sets:
        block = logits[:, start : start + len(x)]  # (K, n, C_base + C_novel)
        start += len(x)
        columns = block[..., : len(base)] if is_base else block[..., len(base) :]
        right = columns.argmax(-1).cpu().numpy() == np.array([item.label for item in items])
        for kind, row in zip(variants, right, strict=True):
            out[kind].append(row)
    return out


def _joined(a: ClassPrompts, b: ClassPrompts) -> ClassPrompts:
    """The classes of ``a`` then ``b`` as one set, the shorter token rows padded with id 0 and zero embeddings
    after their end-of-text token (attention is causal, so padding after it changes no class feature)."""
    length = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]))

    return ClassPrompts(
        a.names + b.names,
        torch.cat([padded(a.input_ids), padded(b.input_ids)]),
        torch.cat([padded(a.embeds), padded(b.embeds)]),
    )


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if len(a) else math.nan
