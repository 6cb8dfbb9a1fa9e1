"""The training loop end to end on a random-init tiny CLIP and a 1-shot world task: what it records is right.

Recorded gate gradients are compared with ∂L/∂g from an independent autograd pass over the same batch; the
equilibrium rescale must change them by exactly α = min(1/(σ(1−σ) + 1e-8), 10).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import random_backbone

from recorders.format import Recording, gate_path, loss_path
from recorders.format.errors import ConfigError, WsError
from recorders.methods.gates import equilibrium_scale
from recorders.methods.registry import METHODS
from recorders.train.config import build_config
from recorders.train.inputs import prepare_data, train_batches
from recorders.train.loop import build_run, lr_at, train


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory):
    return random_backbone(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_task():
    """1 shot of 8 base classes as training images (labels span all 18 base classes) and 4 test images per half."""
    from recorders.data.fewshot import base_to_novel
    from recorders.data.world import load_world

    task = base_to_novel(load_world(), shots=1, seed=1)
    return replace(task, train=task.train[:8], test_base=task.test_base[:4], test_novel=task.test_novel[:4])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


def config(method: str, out: Path, **overrides):
    values = {
        "method": method,
        "epochs": 1,
        "warmup_epochs": 0,
        "batch_size": 8,
        "views": 2,
        "lr": 0.01,
        "out": str(out),
        **overrides,
    }
    return build_config(list(values.items()))


def record(backbone, task, cache: Path, cfg):
    run = build_run(cfg, backbone=backbone, task=task)
    return run, train(run, cache_dir=cache)


def autograd_gate_grads(backbone, task, cache: Path, cfg) -> tuple[dict[str, torch.Tensor], object]:
    """∂L/∂g of the first step, by autograd on a freshly built, identically seeded method (equilibrium off)."""
    run = build_run(replace(cfg, grad_equilibrium=False), backbone=backbone, task=task)
    method = run.method
    data = prepare_data(method, task, run.cfg, cache)
    inputs, labels = next(train_batches(data, method, run.cfg, 0))
    base = method.encode_classes(task.base_classnames)
    gates = {}
    if run.cfg.method == "cocoop-gating":
        method.gate.capture = True
    out = method(inputs, base)
    loss = F.cross_entropy(out.logits, labels) + sum(out.terms.values())
    if run.cfg.method == "coop-gating":
        (gates["gate"],) = torch.autograd.grad(loss, [method.gate.logits])
    elif run.cfg.method == "cocoop-gating":  # per input: (B, n) gradients of the instance logits
        (gates["gate"],) = torch.autograd.grad(loss, [method.gate.last_logits])
    else:
        params = [g.logits for g in method.length_gates] + [method.depth_gate.logits]
        grads = torch.autograd.grad(loss, params)
        gates = {f"length_gates_{d}": g for d, g in enumerate(grads[:-1])} | {"depth_gate": grads[-1]}
    return gates, method


GATED = ["coop-gating", "cocoop-gating", "adaptive-bimaple"]


@pytest.mark.parametrize("name", GATED)
def test_recorded_gate_grads_equal_autograd_and_equilibrium_rescales_exactly(
    tiny_backbone, tiny_task, cache, tmp_path, name
):
    cfg = config(name, tmp_path / "plain.h5", gate_init="uniform", eval_at_start=False)
    expected, reference = autograd_gate_grads(tiny_backbone, tiny_task, cache, cfg)
    record(tiny_backbone, tiny_task, cache, cfg)
    eq_cfg = replace(cfg, grad_equilibrium=True, out=str(tmp_path / "eq.h5"))
    record(tiny_backbone, tiny_task, cache, eq_cfg)
    with Recording.open(tmp_path / "plain.h5") as plain, Recording.open(tmp_path / "eq.h5") as eq:
        assert set(plain.gate_sets) == set(expected)
        for gate_set, grad in expected.items():
            recorded = plain.row(gate_path(gate_set, "grad"), 0)
            rescaled = eq.row(gate_path(gate_set, "grad"), 0)
            if grad.dim() == 2:  # instance gates record the batch sum of per-input gradients
                logits = reference.gate.last_logits.detach()
                alpha = equilibrium_scale(logits)
                np.testing.assert_allclose(recorded, grad.sum(0).numpy(), rtol=1e-4, atol=1e-9)
                np.testing.assert_allclose(rescaled, (alpha * grad).sum(0).numpy(), rtol=1e-4, atol=1e-9)
            else:
                logits = torch.as_tensor(plain.row(gate_path(gate_set, "logit"), 0))
                alpha = equilibrium_scale(logits)
                assert (alpha > 4.0).all()  # uniform init: every α differs from the σ = 0.5 value of 4
                np.testing.assert_allclose(recorded, grad.numpy(), rtol=1e-4, atol=1e-9)
                np.testing.assert_allclose(rescaled, (alpha * grad).numpy(), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_records_a_valid_complete_recording(tiny_backbone, tiny_task, cache, tmp_path, name):
    cfg = config(name, tmp_path / "run.h5", epochs=2, warmup_epochs=1, batch_size=4)
    run, result = record(tiny_backbone, tiny_task, cache, cfg)
    assert result.steps == 4 and result.before is not None
    with Recording.open(result.path) as rec:
        assert rec.status == "complete" and rec.method == name and rec.n_steps == 4
        assert rec.loss_terms == ("total", "ce", *run.method.extra_losses())
        total = sum(rec.read(loss_path(term)) for term in rec.loss_terms[1:])
        np.testing.assert_allclose(rec.read(loss_path("total")), total, rtol=1e-6)
        np.testing.assert_allclose(rec.read("steps/lr"), [lr_at(s, run.cfg, 2) for s in range(4)])
        assert rec.read("steps/lr")[0] == run.cfg.warmup_lr and rec.read("steps/lr")[2] < run.cfg.lr
        table = rec.eval_table()
        assert list(table["epoch"]) == [0, 1, 2] and list(table["step"]) == [0, 2, 4]
        assert {g.name: g.n_params for g in rec.layout.groups} == {g.name: g.n_params for g in result.groups}
        assert set(rec.prompts) == set(run.method.prompt_params())
        assert rec.attrs["backbone_fingerprint"] == tiny_backbone.fingerprint != ""


def test_same_config_twice_gives_identical_series(tiny_backbone, tiny_task, cache, tmp_path):
    series = []
    for name in ("a", "b"):
        cfg = config("cocoop-gating", tmp_path / f"{name}.h5", batch_size=4, gate_entropy=0.1)
        record(tiny_backbone, tiny_task, cache, cfg)
        with Recording.open(tmp_path / f"{name}.h5") as rec:
            series.append({path: rec.read(path) for path in rec.layout.step_series()})
    assert series[0].keys() == series[1].keys()
    for path, values in series[0].items():
        np.testing.assert_array_equal(values, series[1][path], err_msg=path)


def test_on_nan_stop_fails_the_run_and_skip_continues(tiny_backbone, tiny_task, cache, tmp_path):
    for policy in ("stop", "skip"):
        cfg = config("coop", tmp_path / f"{policy}.h5", batch_size=2, on_nan=policy, eval_at_start=False)
        run = build_run(cfg, backbone=tiny_backbone, task=tiny_task)
        with torch.no_grad():
            run.method.ctx[0, 0] = float("nan")
        if policy == "stop":
            with pytest.raises(WsError, match="non-finite loss at step 0"):
                train(run, cache_dir=cache)
        else:
            train(run, cache_dir=cache)
        with Recording.open(cfg.out) as rec:
            events = [e for e in rec.events() if e.kind == "nonfinite"]
            assert rec.status == ("failed" if policy == "stop" else "complete")
            assert len(events) == (1 if policy == "stop" else 4)
            if policy == "stop":  # the failed step's row reaches the file with the failure
                assert rec.n_steps == 1 and np.isnan(rec.read("steps/loss/total")[0])
            assert "non-finite" in rec.attrs["error"] if policy == "stop" else rec.attrs["error"] == ""


def test_bad_schedule_is_rejected_before_any_file_exists(tiny_backbone, tiny_task, tmp_path):
    cfg = config("coop", tmp_path / "never.h5", epochs=2, warmup_epochs=2)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_run(cfg, backbone=tiny_backbone, task=tiny_task)
    assert not (tmp_path / "never.h5").exists()


def test_train_reports_progress_to_the_callback_it_is_given(tiny_backbone, tiny_task, tmp_path):
    """Steps 1..total for "train" with a loss every 25 steps and at the end; nothing is drawn by the recorder."""
    calls: list[tuple[str, int, int, dict]] = []
    cfg = config("coop", tmp_path / "p.h5", epochs=30, eval_at_start=False)
    run = build_run(cfg, backbone=tiny_backbone, task=tiny_task)
    result = train(run, cache_dir=tmp_path / "fresh", progress=lambda *a, **f: calls.append((*a, f)))
    steps = [(done, total, f) for task_name, done, total, f in calls if task_name == "train"]
    assert [done for done, _, _ in steps] == list(range(1, result.steps + 1))
    assert all(total == result.steps for _, total, _ in steps)
    with_loss = [done for done, _, f in steps if "loss" in f]
    assert with_loss == sorted({*range(25, result.steps + 1, 25), result.steps})
    features = [(done, total) for task_name, done, total, _ in calls if task_name == "features"]
    assert features and all(done <= total for done, total in features) and features[-1][0] == features[-1][1]


def test_one_forward_evaluation_equals_scoring_each_image_set_against_its_own_classes(tmp_path: Path) -> None:
    """Static-gate methods on held features score test base, test novel and validation images, for the trained model
    and every counterfactual, in one text-encoder pass against the base and novel classes joined; each image's
    prediction under each model must be the one it gets when its set is scored alone against its own half's classes
    (predictions()) with that model's gates replaced, on a backbone that tells the classes apart."""
    from recorders.clip.backbone import load_backbone
    from recorders.data.fewshot import base_to_novel
    from recorders.data.world import load_world
    from recorders.methods.gates import find_gates, gate_states, replaced_gates
    from recorders.train.evaluation import _joined, _test_predictions, counterfactuals, predictions

    task = base_to_novel(load_world(), shots=1, seed=1)
    task = replace(task, test_base=task.test_base[::3], test_novel=task.test_novel[::3], val=task.val[::3])
    cfg = config("coop-gating", tmp_path / "r.h5")
    run = build_run(cfg, backbone=load_backbone("builtin", device="cpu"), task=task)
    m = run.method
    initial = gate_states(m)
    with torch.no_grad():  # a learned-looking context and gates away from init
        m.ctx.add_(torch.randn(m.ctx.shape, generator=torch.Generator().manual_seed(5)) * 0.05)
        m.gate.logits.add_(torch.tensor([3.0, -3.0, 1.0, -1.0]).repeat(m.n_ctx)[: m.n_ctx])
    base, novel = m.encode_classes(task.base_classnames), m.encode_classes(task.novel_classnames)
    data = prepare_data(m, task, cfg, tmp_path)
    m.eval()
    correct, values, val = _test_predictions(m, base, novel, data, cfg, with_val=True, initial=initial)
    assert set(correct) == {"trained", "init", "open"} and values == {}
    load, held = task.dataset.load_image, data.test_inputs
    models = {"trained": {}, **counterfactuals(find_gates(m), {}, initial)}
    for kind, replacements in models.items():
        with replaced_gates(m, replacements):
            apart = [
                predictions(m, classes, items, held[half], cfg, load)[0]
                for classes, items, half in (
                    (base, task.test_base, "base"),
                    (novel, task.test_novel, "novel"),
                    (base, task.val, "val"),
                )
            ]
        np.testing.assert_array_equal(correct[kind], np.concatenate(apart[:2]), err_msg=kind)
        if kind == "trained":
            assert val is not None
            np.testing.assert_array_equal(val, apart[2])
    assert any((correct[kind] != correct["trained"]).any() for kind in ("init", "open"))  # the models differ
    right = correct["trained"]
    n_classes = max(len(base), len(novel))
    assert right[: len(task.test_base)].mean() > 3 / n_classes and right[len(task.test_base) :].mean() > 3 / n_classes
    with torch.no_grad():
        ctx = m.context()[0]
        joined = m.text_features(_joined(base, novel), ctx)
        torch.testing.assert_close(joined, torch.cat([m.text_features(base, ctx), m.text_features(novel, ctx)]))
