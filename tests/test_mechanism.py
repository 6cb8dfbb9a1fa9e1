"""Movement attribution against an independent ``torch.optim.SGD`` replay, and the factor summaries' arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import write_run
from torch import nn

from analyses.diagnostics import diagnose
from analyses.mechanism import (
    FACTORS,
    GateFactors,
    gate_factors,
    gate_movement,
    mechanism,
    random_cosine,
    summarize_factors,
)
from recorders import format as rf
from recorders.methods.gates import Gate
from recorders.train.probes import watch

STEPS = 12


class Gated(nn.Module):
    """Context (3, 6) under a static gate (init +2) and an instance gate (bias init +1) on C_i + x·A."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ctx = nn.Parameter(torch.randn(3, 6, generator=g))
        self.static = Gate(3, "length", prompt="ctx", init="biased:2", vector_dim=6, generator=g)
        self.inst = Gate(3, "instance", feature_dim=5, init="biased:1", vector_dim=6, generator=g)
        self.mix = nn.Parameter(torch.randn(5, 6, generator=g) * 0.1, requires_grad=False)
        self.classes = nn.Parameter(torch.randn(4, 6, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.static.gated(self.static(), self.ctx)  # (3, 6)
        per_input = tokens[None] + (x @ self.mix)[:, None]  # (B, 3, 6)
        shift = self.inst.gated(self.inst(x), per_input).sum(1)  # (B, 6)
        return shift @ self.classes.T


GROUPS = {"gates": dict(lr_scale=3.0, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.05)}


def _optimizer(model: Gated) -> torch.optim.SGD:
    gate = GROUPS["gates"]
    return torch.optim.SGD(
        [
            {"params": [model.ctx], "name": "ctx", "lr_scale": 1.0},
            {
                "params": [*model.static.parameters(), *model.inst.parameters()],
                "name": "gates",
                "role": "gate",
                "lr_scale": gate["lr_scale"],
                "initial_lr": 0.1 * gate["lr_scale"],
                "momentum": gate["momentum"],
                "dampening": gate["dampening"],
                "weight_decay": gate["weight_decay"],
            },
        ],
        lr=0.1,
        momentum=0.5,
        weight_decay=1e-3,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A recording of STEPS steps of ``Gated`` with a cosine-ish schedule, and the parameters before each step."""
    path = tmp_path_factory.mktemp("mechanism") / "r.h5"
    model = Gated()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, prompts={"ctx": model.ctx}, block=5)
    g = torch.Generator().manual_seed(1)
    params = []
    with rf.RecordingWriter(path, probe.layout, config={}, method="t", seed=0, device="cpu") as w:
        probe.attach(w)
        for step in range(STEPS):
            lr = 0.1 * (0.5 + 0.5 * math.cos(math.pi * step / STEPS))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            params.append(
                {k: p.detach().double().numpy().copy() for k, p in (*model.named_parameters(),) if p.requires_grad}
            )
            x, y = torch.randn(4, 5, generator=g), torch.randint(4, (4,), generator=g)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            probe.after_backward(step, 0, lr, {"total": loss})
            optimizer.step()
        probe.close()
    return path, params


def _replay(initial: dict[str, np.ndarray], lrs: np.ndarray) -> list[dict[str, np.ndarray]]:
    """torch.optim.SGD on float64 copies of the gate parameters with a zero gradient: parameters before each step."""
    gate = GROUPS["gates"]
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in initial.items()}
    sgd = torch.optim.SGD(
        list(params.values()),
        lr=1.0,
        momentum=gate["momentum"],
        dampening=gate["dampening"],
        weight_decay=gate["weight_decay"],
    )
    out = []
    for lr in lrs:
        out.append({k: p.detach().numpy().copy() for k, p in params.items()})
        for p in params.values():
            p.grad = torch.zeros_like(p)
        sgd.param_groups[0]["lr"] = float(lr) * gate["lr_scale"]
        sgd.step()
    return out


def test_decay_split_matches_torch_sgd_with_a_zero_gradient(trained: tuple[Path, list]) -> None:
    path, params = trained
    names = ("static.logits", "inst.proj.bias", "inst.proj.weight")
    with rf.Recording.open(path) as rec:
        lrs = rec.read(rf.LR)
        replay = _replay({k: params[0][k] for k in names}, lrs)
        static = gate_movement(rec, rec.gate_sets["static"])
        inst = gate_movement(rec, rec.gate_sets["inst"])
    for t in range(STEPS):
        np.testing.assert_allclose(
            static.parts["logit"].decay[t], replay[t]["static.logits"] - params[0]["static.logits"], rtol=1e-9
        )
        np.testing.assert_allclose(
            inst.parts["bias"].decay[t], replay[t]["inst.proj.bias"] - params[0]["inst.proj.bias"], rtol=1e-9
        )
        w_decay = np.linalg.norm(replay[t]["inst.proj.weight"] - params[0]["inst.proj.weight"], axis=1)
        np.testing.assert_allclose(inst.parts["weight"].decay[t], w_decay, rtol=1e-9)
        # the rest: what the run did beyond decay alone (from the parameters seen in training, float32 records)
        f_w0 = replay[t]["inst.proj.weight"]
        np.testing.assert_allclose(
            inst.parts["weight"].rest[t], np.linalg.norm(params[t]["inst.proj.weight"] - f_w0, axis=1), rtol=1e-5
        )
        np.testing.assert_allclose(
            inst.parts["bias"].rest[t], params[t]["inst.proj.bias"] - replay[t]["inst.proj.bias"], rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            static.parts["logit"].rest[t], params[t]["static.logits"] - replay[t]["static.logits"], rtol=1e-5, atol=1e-7
        )
    # weight decay moves instance gates too: never a silent 0
    for part in ("bias", "weight"):
        assert np.all(np.abs(inst.parts[part].decay[1:]) > 1e-6), part
    assert np.all(np.abs(inst.parts["weight"].rest[-1]) > 1e-6)
    with rf.Recording.open(path) as rec:
        d = diagnose(rec).gate_sets["inst"]
    assert np.all(np.isfinite(d.decay_displacement)) and np.all(d.decay_displacement != 0)


def test_summary_splits_log_ratio_exactly_and_names_the_smallest_factor() -> None:
    k, n = 9, 2
    rng = np.random.default_rng(0)
    factors = {
        "one_minus_sigma": rng.uniform(0.3, 0.6, (k, n)),
        "norm": rng.uniform(0.2, 0.4, (k, n)),
        "cos": np.concatenate([rng.uniform(0.5, 0.9, (3, n)), rng.uniform(1e-3, 1e-2, (6, n))]),
    }
    ratio = factors["one_minus_sigma"] * factors["norm"] * factors["cos"]
    parts = {"task": np.full((k, n), 3.0), "entropy": np.full((k, n), -1.0)}
    f = GateFactors(
        "g",
        "length",
        np.arange(k),
        factors,
        ratio,
        parts,
        64,
        {"one_minus_sigma": 0.5, "norm": 0.3, "cos": random_cosine(64)},
    )
    s = summarize_factors(f)
    for phase, idx in zip(("early", "middle", "late"), np.array_split(np.arange(k), 3), strict=True):
        logs = s.log10[phase]
        assert logs["ratio"] == pytest.approx(np.mean(np.log10(ratio[idx])), rel=1e-12)
        assert sum(logs[x] for x in FACTORS) == pytest.approx(logs["ratio"], rel=1e-12)
        assert s.shares[phase] == pytest.approx({"task": 0.75, "entropy": 0.25})
    assert s.dominant["early"] == "norm" and s.dominant["late"] == "cos"
    assert "dominant |cos|" in s.line("late")


def test_random_cosine_reference() -> None:
    assert random_cosine(2) == pytest.approx(2 / math.pi)  # |cos| of a uniform angle
    assert random_cosine(3) == pytest.approx(0.5)  # uniform on [-1, 1] in 3 d
    assert random_cosine(512) == pytest.approx(math.sqrt(2 / (math.pi * 512)), rel=2e-3)
    assert math.isnan(random_cosine(0))


def test_recordings_without_the_series_give_nan_never_zero(tmp_path: Path) -> None:
    path = write_run(tmp_path / "old.h5", behaviour="adaptive", gate_kind="instance")
    with rf.Recording.open(path) as rec:
        assert {spec.kind for spec in rec.gate_sets.values()} == {"instance"}
        for spec in rec.gate_sets.values():
            f = gate_factors(rec, spec)
            assert not f.recorded and np.isnan(f.ratio).all()
            s = summarize_factors(f)
            assert s.dominant["late"] == "" and "not recorded" in s.line()
            m = gate_movement(rec, spec)
            if spec.kind == "instance":
                assert np.isnan(m.parts["bias"].decay).all() and np.isnan(m.parts["weight"].rest).all()
        summary = mechanism(rec)
        assert set(summary) == set(rec.gate_sets)
