"""The verdict on planted controls, the counterfactual statistics against scipy, and version-1 recordings.

Synthetic recordings (real writer, schema 1.1) plant the ground truth: a gate driven by a consistent gradient that
matters is adaptive; a gate moved only by weight decay is collapsed; a ×50 random walk without a functional effect
is not adaptive; an instance gate whose σ separates two input groups is adaptive. Rescaling the gate gradients by
1e-6 (the gate/prompt ratio by the same factor) must not change any verdict: the rule does not read the ratio's
size.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from synthetic import cosine_lr, decay_only_path

from analyses.diagnostics import diagnose
from analyses.verdict import VerdictThresholds, compare_correct, judge, sign_consistency
from recorders.format import (
    EPOCH,
    LR,
    STEP,
    EvalSpec,
    GateSetSpec,
    GroupSpec,
    Layout,
    PromptSpec,
    Recording,
    RecordingWriter,
    gate_path,
    prompt_path,
)

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
N_IMAGES = 400  # 200 base + 200 novel


def planted(
    path: Path,
    *,
    logit: np.ndarray,
    grad: np.ndarray,
    flips: dict[str, int],
    kind: str = "length",
    init: float = 0.0,
    spread: tuple[float, float] = (0.01, 0.01),
    lr: np.ndarray | None = None,
    weight_decay: float = 5e-4,
    seed: int = 0,
) -> Path:
    """A one-gate-set recording: ``logit``/``grad`` ``(n_steps, n_gates)``; at the last evaluation each
    counterfactual gets ``flips[kind]`` images wrong that the trained model gets right (negative: right that it
    gets wrong), among 400 test images; instance gates' test-set std goes ``spread[0] → spread[1]``."""
    rng = np.random.default_rng(seed)
    n_steps, n_gates = logit.shape
    lr = cosine_lr(n_steps) if lr is None else lr
    instance = kind == "instance"
    cfs = ("mean", "init", "open") if instance else ("init", "open")
    layout = Layout(
        groups=(
            GroupSpec("ctx", "prompt", 32, weight_decay=weight_decay, momentum=0.9),
            GroupSpec("gates", "gate", n_gates, weight_decay=weight_decay, momentum=0.9),
        ),
        gate_sets=(
            GateSetSpec(
                "g", n_gates, kind, prompt="ctx", group="gates", init_logit=() if instance else (init,) * n_gates
            ),
        ),
        prompts=(PromptSpec("ctx", n_gates, "ctx"),),
        evaluation=EvalSpec(N_IMAGES // 2, N_IMAGES // 2, cfs, ("g",) if instance else ()),
    )
    value = 1 / (1 + np.exp(-logit))
    block = {
        STEP: np.arange(n_steps),
        EPOCH: np.arange(n_steps) // 10,
        LR: lr,
        gate_path("g", "logit"): logit,
        gate_path("g", "value"): value,
        gate_path("g", "dsigmoid"): value * (1 - value),
        gate_path("g", "grad"): grad,
        prompt_path("ctx"): np.full((n_steps, n_gates), 1e-2),
    }
    if instance:
        block[gate_path("g", "value_mean")] = value
        block[gate_path("g", "value_std")] = np.zeros_like(value)  # batch size 1: no across-batch spread
    with RecordingWriter(path, layout, config={"method": "x"}, method="x", seed=seed, device="cpu") as w:
        w.append_block(block)
        trained = rng.random(N_IMAGES) < 0.8
        for step, std in ((0, spread[0]), (n_steps, spread[1])):
            correct = {"trained": trained}
            for cf in cfs:
                other = trained.copy()
                k = flips.get(cf, 0) if step else 0
                idx = np.flatnonzero(trained if k > 0 else ~trained)[: abs(k)]
                other[idx] = ~other[idx]
                correct[cf] = other
            stats = {"g": {"std": np.full(n_gates, std), "mean": value[min(step, n_steps - 1)]}}
            w.add_eval(step, step // 10, trained[:200].mean(), trained[200:].mean(), correct=correct, gate_stats=stats)
    return path


def consistent_walk(n: int, gates: int, drift: float, rng: np.random.Generator, start: float = 0.0):
    """Logits moving ``drift`` over the run by a gradient of constant sign (plus noise)."""
    grad = -np.abs(rng.normal(1e-2, 2e-3, (n, gates))) * np.sign(drift)
    logit = start + np.linspace(0, drift, n)[:, None] + rng.normal(0, 1e-4, (n, gates))
    return logit, grad


def verdict_of(path: Path, kind: str = "length") -> tuple[str, dict]:
    with Recording.open(path) as rec:
        v = judge(rec, rec.gate_sets["g"])
    return v.verdict, {c.name: c for c in v.criteria}


# ------------------------------------------------------------------------------------------------ controls
def test_consistent_gradient_that_matters_is_adaptive(tmp_path):
    rng = np.random.default_rng(1)
    logit, grad = consistent_walk(300, 4, 1.5, rng)
    verdict, c = verdict_of(planted(tmp_path / "a.h5", logit=logit, grad=grad, flips={"init": 40, "open": 10}))
    assert verdict == "adaptive"
    assert c["functional"].holds and c["movement"].holds and c["consistency"].holds


def test_gate_moved_only_by_weight_decay_is_collapsed_with_an_onset(tmp_path):
    rng = np.random.default_rng(2)
    n, wd = 300, 5e-2  # strong decay so the decay-only displacement is large (σ moves ~0.01)
    lr = np.full(n, 0.002)
    logit = decay_only_path(3.0, lr, weight_decay=wd, momentum=0.9)[:, None] * np.ones((1, 4))
    grad = rng.normal(0, 1e-6, (n, 4))
    path = planted(tmp_path / "d.h5", logit=logit, grad=grad, flips={"open": 3}, init=3.0, lr=lr, weight_decay=wd)
    with Recording.open(path) as rec:
        v = judge(rec, rec.gate_sets["g"])
        total = abs(1 / (1 + math.exp(-logit[-1, 0])) - 1 / (1 + math.exp(-3.0)))
    assert total > 0.003  # the gate did move (by decay) ...
    assert v.verdict == "collapsed" and v.onset_step == 0  # ... yet not by gradient, and it does not matter
    c = {c.name: c for c in v.criteria}
    assert c["movement"].values["gradient_movement"] < 1e-4


def test_random_walk_at_50x_lr_without_effect_is_not_adaptive(tmp_path):
    rng = np.random.default_rng(3)
    n = 400
    grad = rng.normal(0, 1e-2, (n, 4))  # batch noise: random signs
    logit = np.cumsum(-50 * 0.002 * grad * 30, axis=0)  # a ×50 lr walk: σ moves by ~0.05
    flips = {"init": 2, "open": -3}  # a handful of images change both ways: within noise
    verdict, c = verdict_of(planted(tmp_path / "w.h5", logit=logit, grad=grad, flips=flips))
    assert c["movement"].holds, "the planted walk must move the gate"
    assert c["consistency"].holds is False
    assert verdict != "adaptive"


def test_instance_gate_separating_two_groups_is_adaptive_and_a_batch1_collapse_is_collapsed(tmp_path):
    rng = np.random.default_rng(4)
    logit, grad = consistent_walk(200, 2, 0.5, rng)
    separating = planted(
        tmp_path / "i.h5", logit=logit, grad=grad, kind="instance", flips={"mean": 30}, spread=(0.01, 0.3)
    )
    assert verdict_of(separating)[0] == "adaptive"
    flat = rng.normal(0, 1e-7, (200, 2))
    collapsed = planted(
        tmp_path / "c.h5",
        logit=flat,
        grad=rng.normal(0, 1e-6, (200, 2)),
        kind="instance",
        flips={},
        spread=(0.01, 0.008),
    )
    verdict, c = verdict_of(collapsed)
    assert verdict == "collapsed" and c["input_spread"].holds is False


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_the_verdict_does_not_read_the_ratio_size(tmp_path, scale):
    """The same planted runs with gate gradients ×1e-6 (ratio ~1e-8) or ×1e6: identical verdicts."""
    rng = np.random.default_rng(5)
    logit, grad = consistent_walk(300, 4, 1.5, rng)
    adaptive = planted(tmp_path / "a.h5", logit=logit, grad=grad * scale, flips={"init": 40})
    n, lr = 300, np.full(300, 0.002)
    decay = decay_only_path(3.0, lr, weight_decay=5e-4, momentum=0.9)[:, None] * np.ones((1, 4))
    collapsed = planted(
        tmp_path / "c.h5", logit=decay, grad=rng.normal(0, 1e-2, (n, 4)) * scale, flips={}, init=3.0, lr=lr
    )
    assert verdict_of(adaptive)[0] == "adaptive"
    assert verdict_of(collapsed)[0] == "collapsed"
    with Recording.open(adaptive) as rec:
        ratio = diagnose(rec).gate_sets["g"].phases["late"]
    assert (ratio < 1e-3) if scale < 1 else (ratio > 1e3)


def test_no_functional_effect_but_consistent_movement_is_inconclusive_naming_it(tmp_path):
    rng = np.random.default_rng(6)
    logit, grad = consistent_walk(300, 4, 1.5, rng)
    verdict, _ = verdict_of(planted(tmp_path / "m.h5", logit=logit, grad=grad, flips={}))
    assert verdict == "inconclusive"
    with Recording.open(tmp_path / "m.h5") as rec:
        v = judge(rec, rec.gate_sets["g"])
    assert any("functional effect" in m for m in v.missing)


# ------------------------------------------------------------------------------------------------ statistics
def test_mcnemar_p_is_the_exact_binomial_test_on_discordant_pairs_and_the_interval_covers_the_drop():
    rng = np.random.default_rng(7)
    t = rng.random(600) < 0.8
    o = t.copy()
    flip = rng.choice(600, 60, replace=False)
    o[flip] = ~o[flip]
    c = compare_correct("init", 10, t, o, 300, VerdictThresholds())
    b10, b01 = int((t & ~o).sum()), int((~t & o).sum())
    assert (c.trained_only, c.counterfactual_only) == (b10, b01)
    assert c.mcnemar_p == pytest.approx(binomtest(b10, b10 + b01, 0.5).pvalue, rel=1e-12)
    hm = lambda a, b: 2 * a * b / (a + b)  # noqa: E731
    drop = hm(t[:300].mean(), t[300:].mean()) - hm(o[:300].mean(), o[300:].mean())
    assert c.drop_hm == pytest.approx(drop) and c.drop_lo <= drop <= c.drop_hi


def test_sign_consistency_separates_constant_from_random_signs():
    rng = np.random.default_rng(8)
    th = VerdictThresholds()
    magnitudes = np.abs(rng.normal(size=(200, 3)))
    s2, ref = sign_consistency(magnitudes, 20, th)
    assert s2 > 5 * ref  # a constant sign: S² ≈ 2/π·window for half-normal magnitudes
    s2, ref = sign_consistency(magnitudes * rng.choice([-1, 1], size=(200, 3)), 20, th)
    assert s2 < ref


def test_sign_consistency_skips_steps_without_a_gradient():
    """Every 5th step NaN (a step that did not call the gate): each window's S² is that of its 16 finite steps,
    not the window dropped (before, every window held a NaN and the measure was n/a)."""
    rng = np.random.default_rng(8)
    th = VerdictThresholds()
    grad = np.abs(rng.normal(size=(200, 3)))
    grad[3::5] = np.nan
    s2, ref = sign_consistency(grad, 20, th)
    finite = grad[~np.isnan(grad[:, 0])].reshape(10, 16, 3)  # 16 finite steps in each 20-step window
    assert s2 == pytest.approx(((finite.sum(1) ** 2) / (finite**2).sum(1)).mean())
    assert s2 > 5 * ref
    assert math.isnan(sign_consistency(np.full((40, 2), np.nan), 20, th)[0])


# ------------------------------------------------------------------------------------------------ version 1
@pytest.mark.parametrize("name", ["demo.h5", "coop-gating-world.h5"])
def test_version_1_recordings_open_and_their_verdict_names_the_missing_evidence(name):
    from typer.testing import CliRunner

    from workstation.cli import app

    path = FIXTURES / name
    with Recording.open(path) as rec:
        assert rec.schema_version == 1 and rec.schema_minor == 0 and rec.evaluation is None
        assert rec.eval_correct() == {} and np.isnan(rec.validation_acc()).all()
        d = diagnose(rec)
    assert d.best_eval is None
    for g in d.gate_sets.values():
        assert g.verdict == "inconclusive"
        assert any("counterfactual evaluation" in m for m in g.evidence.missing)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "missing: counterfactual evaluation" in result.output
    assert "best: not recorded" in result.output


def test_version_1_recordings_in_ws_stats_and_the_viewer_loader(tmp_path):
    import shutil

    from analyses.grouping import run_metric
    from workstation.app.data import RunData

    with Recording.open(FIXTURES / "coop-gating-world.h5") as rec:
        assert run_metric(rec, "final_hm") == pytest.approx(rec.eval_table()["hm"][-1])
        assert math.isnan(run_metric(rec, "best_hm"))  # selection needs validation scores
        assert math.isnan(run_metric(rec, "cf_init_drop_hm"))
        assert not math.isnan(run_metric(rec, "gradient_movement"))
    copy = tmp_path / "v1.h5"
    shutil.copy(FIXTURES / "coop-gating-world.h5", copy)
    run = RunData.open(copy)
    try:
        assert run.n_rows > 0 and run.final_hm() is not None
        assert run.diagnose().gate_sets["gate"].verdict == "inconclusive"
    finally:
        run.rec.close()


# ------------------------------------------------------------------------------------------------ real evaluations
@pytest.mark.slow
@pytest.mark.parametrize("method", ["coop-gating", "cocoop-gating"])
def test_counterfactual_accuracies_equal_an_evaluation_with_the_gates_edited_by_hand(tmp_path, method):
    """evaluate()'s counterfactuals against the same model with its gate parameters overwritten by hand."""
    import torch
    from test_methods import random_backbone
    from test_training import config

    from recorders.data.fewshot import base_to_novel
    from recorders.data.world import load_world
    from recorders.methods.gates import find_gates, gate_states
    from recorders.train.evaluation import evaluate
    from recorders.train.inputs import prepare_data
    from recorders.train.loop import build_run

    class Factory:
        def mktemp(self, name):
            path = tmp_path / name
            path.mkdir()
            return path

    backbone = random_backbone(Factory())
    task = base_to_novel(load_world(), shots=1, seed=1)
    task.test_base, task.test_novel = task.test_base[:60], task.test_novel[:60]
    cfg = config(method, tmp_path / "r.h5", eval_batch_size=16)
    run = build_run(cfg, backbone=backbone, task=task, cache_dir=tmp_path)
    m = run.method
    initial = gate_states(m)
    (name, gate), *_ = find_gates(m).items()
    with torch.no_grad():  # move the gates away from init, as training would
        for p in gate.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 2.0)
    base, novel = m.encode_classes(task.base_classnames), m.encode_classes(task.novel_classnames)
    data = prepare_data(m, task, cfg, tmp_path)
    ev = evaluate(m, base, novel, data, cfg, initial)
    trained = {k: v.clone() for k, v in gate.state_dict().items()}

    def by_hand() -> np.ndarray:
        edited = evaluate(m, base, novel, data, cfg)  # no counterfactuals: the plain model as edited
        return edited.correct["trained"]

    with torch.no_grad():
        gate.load_state_dict(initial[name])
        np.testing.assert_array_equal(ev.correct["init"], by_hand())
        if gate.kind == "instance":  # σ constant at its test-set mean: zero weights, bias = logit(mean)
            mean = torch.from_numpy(ev.gate_stats[name]["mean"]).float()
            gate.proj.weight.zero_()
            gate.proj.bias.copy_(torch.log(mean / (1 - mean)))
            np.testing.assert_array_equal(ev.correct["mean"], by_hand())
            gate.proj.bias.fill_(40.0)  # σ(40) = 1 in float32
        else:
            gate.logits.fill_(40.0)
        np.testing.assert_array_equal(ev.correct["open"], by_hand())
        gate.load_state_dict(trained)
    np.testing.assert_array_equal(ev.correct["trained"], by_hand())
    assert ev.base == pytest.approx(ev.correct["trained"][:60].mean())
    assert not np.isnan(ev.val)


@pytest.mark.slow
def test_a_short_default_world_run_is_collapsed_with_no_functional_effect(tmp_path):
    """The README default run (coop-gating, world, seed 1) shortened to 6 epochs (54 steps) on the built-in CLIP."""
    from recorders.train.config import build_config
    from recorders.train.loop import build_run, train

    cfg = build_config([("epochs", 6), ("out", str(tmp_path / "run.h5"))])
    train(build_run(cfg, cache_dir=tmp_path), cache_dir=tmp_path)
    with Recording.open(tmp_path / "run.h5") as rec:
        g = diagnose(rec).gate_sets["gate"]
    assert g.verdict == "collapsed", g.evidence
    init = g.evidence.counterfactuals["init"]
    assert init.drop_lo <= 0 <= init.drop_hi
