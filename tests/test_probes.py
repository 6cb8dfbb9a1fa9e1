"""Probes record what autograd computes: gate gradients, σ, σ', the imbalance factors, group norms — without
moving data to the host between block flushes."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

from recorders import format as rf
from recorders.methods.gates import Gate
from recorders.train.demo import run_demo
from recorders.train.probes import _batch_statistics, _factors, _Logistic, _products, watch


class Tiny(nn.Module):
    """Context (4, 8) scaled by length gates and per-input instance gates; 3 classes; one extra Linear."""

    def __init__(self, gate_init: str = "uniform") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.ctx = nn.Parameter(torch.randn(4, 8, generator=g))
        self.ctx_gates = Gate(4, "length", prompt="ctx", init=gate_init, generator=g)
        self.inst = Gate(4, "instance", feature_dim=8, generator=g)
        self.head = nn.Linear(8, 3)
        self.classes = nn.Parameter(torch.randn(3, 8, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.ctx_gates()[:, None] * self.ctx  # (4, 8)
        shift = self.inst(x) @ tokens  # (B, 8)
        return (x + shift) @ self.classes.T + self.head(x)


WRITER = {"config": {}, "method": "t", "seed": 0, "device": "cpu"}


def _optimizer(model: Tiny, wd: float = 5e-4) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [
            {"params": [model.ctx]},
            {"params": [*model.ctx_gates.parameters(), *model.inst.parameters()], "lr": 0.5},
            {"params": model.head.parameters(), "name": "head", "role": "coupling"},
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=wd,
        dampening=0.1,
    )


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 8, generator=g), torch.randint(3, (6,), generator=g)) for _ in range(n)]


def test_layout_from_model_and_optimizer() -> None:
    model = Tiny()
    probe = watch(model, _optimizer(model), prompts={"ctx": model.ctx}, tensors={"ctx": (model.ctx, 3)})
    groups = {g.name: g for g in probe.layout.groups}
    assert {n: g.role for n, g in groups.items()} == {"group0": "prompt", "group1": "gate", "head": "coupling"}
    assert groups["group1"].lr_scale == pytest.approx(5.0)
    assert groups["group1"].n_params == 4 + 4 * 8 + 4
    assert (groups["head"].weight_decay, groups["head"].momentum, groups["head"].dampening) == (5e-4, 0.9, 0.1)
    gates = {g.name: g for g in probe.layout.gate_sets}
    assert gates["ctx_gates"].decomposition and gates["ctx_gates"].prompt == "ctx"
    assert gates["ctx_gates"].group == "group1" and gates["ctx_gates"].kind == "length"
    np.testing.assert_array_equal(gates["ctx_gates"].init_logit, model.ctx_gates.logits.detach().double().numpy())
    assert gates["inst"].kind == "instance" and not gates["inst"].decomposition
    assert probe.layout.prompts == (rf.PromptSpec("ctx", 4, "group0"),)
    assert probe.layout.tensors == (rf.TensorSpec("ctx", (4, 8), 3),)
    assert watch(Gate(2), torch.optim.SGD(Gate(2).parameters(), lr=1.0)).layout.gate_sets[0].name == "gates"


@pytest.fixture(params=["raw", "device"])
def norm_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a gradient norm is measured: a small parameter's gradient copied whole (its norm taken on the
    host) and a large one's norm taken on the device by ``_foreach_norm`` (forced here by a limit of 0)."""
    if request.param == "device":
        monkeypatch.setattr("recorders.train.probes.RAW_GRADIENT_LIMIT", 0)
    return str(request.param)


def test_recorded_series_match_autograd(tmp_path: Path, norm_path: str) -> None:
    """Every recorded number against an independent float64 computation on a fresh copy at the same step."""
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, prompts={"ctx": model.ctx}, block=2)
    expected: list[dict[str, np.ndarray]] = []
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu") as w:
        probe.attach(w)
        for step, (x, y) in enumerate(_batches(5)):
            ref = copy.deepcopy(model).double()
            ref_loss = F.cross_entropy(ref(x.double()), y)
            inst_logits = ref.inst.proj(x.double())
            g_gate, g_ctx, g_bias = torch.autograd.grad(ref_loss, [ref.ctx_gates.logits, ref.ctx, ref.inst.proj.bias])
            group_grads = torch.autograd.grad(
                F.cross_entropy(ref(x.double()), y), [*ref.ctx_gates.parameters(), *ref.inst.parameters()]
            )
            sig = torch.sigmoid(inst_logits)
            expected.append(
                {
                    "logit": ref.ctx_gates.logits.detach().numpy(),
                    "grad": g_gate.numpy(),
                    "g_ctx": g_ctx.numpy(),
                    "inst_grad": g_bias.numpy(),  # the bias gradient is ∂L/∂g summed over the batch
                    "inst_logit": inst_logits.detach().mean(0).numpy(),
                    "inst_mean": sig.detach().mean(0).numpy(),
                    "inst_std": sig.detach().std(0, correction=0).numpy(),
                    "group1": torch.linalg.vector_norm(torch.cat([g.flatten() for g in group_grads])).item(),
                    "group0": torch.linalg.vector_norm(g_ctx).item(),
                    "head": torch.linalg.vector_norm(
                        torch.cat(
                            [
                                g.flatten()
                                for g in torch.autograd.grad(
                                    F.cross_entropy(ref(x.double()), y), list(ref.head.parameters())
                                )
                            ]
                        )
                    ).item(),
                    "loss": ref_loss.item(),
                }
            )
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            probe.after_backward(step, 0, 0.1, {"total": loss})
            optimizer.step()
        probe.close()
    rec = rf.Recording.open(tmp_path / "r.h5")
    assert rec.n_steps == 5
    tol = {"rtol": 1e-4, "atol": 1e-7}
    for i, e in enumerate(expected):

        def row(gates: str, series: str, i: int = i) -> np.ndarray:
            return rec.row(rf.gate_path(gates, series), i).astype(np.float64)

        np.testing.assert_allclose(row("ctx_gates", "logit"), e["logit"], **tol)
        np.testing.assert_allclose(row("ctx_gates", "grad"), e["grad"], **tol)
        np.testing.assert_allclose(rec.row(rf.prompt_path("ctx"), i), np.linalg.norm(e["g_ctx"], axis=1), **tol)
        np.testing.assert_allclose(row("inst", "grad"), e["inst_grad"], **tol)
        np.testing.assert_allclose(row("inst", "logit"), e["inst_logit"], **tol)
        np.testing.assert_allclose(row("inst", "value_mean"), e["inst_mean"], **tol)
        np.testing.assert_allclose(row("inst", "value_std"), e["inst_std"], **tol)
        for group in ("group0", "group1", "head"):
            np.testing.assert_allclose(rec.row(rf.grad_norm_path(group), i), e[group], **tol, err_msg=group)
        np.testing.assert_allclose(rec.row(rf.loss_path("total"), i), e["loss"], **tol)
    logit = rec.read(rf.gate_path("ctx_gates", "logit")).astype(np.float64)
    sigma = expit(logit)
    np.testing.assert_allclose(rec.read(rf.gate_path("ctx_gates", "value")), sigma, rtol=1e-6)
    np.testing.assert_allclose(rec.read(rf.gate_path("ctx_gates", "dsigmoid")), sigma * (1 - sigma), rtol=1e-6)
    # the imbalance decomposition |∂L/∂g_i| / ‖∂L/∂C_i‖ = (1−σ_i)·‖C_i‖·|cos|, on the recorded numbers
    lhs = np.abs(rec.read(rf.gate_path("ctx_gates", "grad"))) / rec.read(rf.prompt_path("ctx"))
    rhs = (
        (1 - rec.read(rf.gate_path("ctx_gates", "value")))
        * rec.read(rf.gate_path("ctx_gates", "prompt_norm"))
        * np.abs(rec.read(rf.gate_path("ctx_gates", "cosine")))
    )
    np.testing.assert_allclose(lhs, rhs, rtol=1e-3)
    assert rec.read(rf.gate_path("ctx_gates", "cosine")).std() > 0  # not a constant


def test_dsigmoid_stays_accurate_for_saturated_gates(tmp_path: Path) -> None:
    """At logit 30 float32 σ(1−σ) is 0; the recorded σ' must still equal the float64 value e^{−30}/(1+e^{−30})²."""
    model = Tiny(gate_init="biased:30")
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, prompts={"ctx": model.ctx})
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu") as w:
        probe.attach(w)
        x, y = _batches(1)[0]
        F.cross_entropy(model(x), y).backward()
        probe.after_backward(0, 0, 0.1, {})
        probe.close()
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        recorded = rec.row(rf.gate_path("ctx_gates", "dsigmoid"), 0)
        assert np.isnan(rec.row(rf.loss_path("total"), 0))  # a loss term not given is missing, not 0
    e = np.exp(-30.0)
    np.testing.assert_allclose(recorded, e / (1 + e) ** 2, rtol=1e-6)
    assert np.float32(expit(np.float32(30.0))) * (1 - np.float32(expit(np.float32(30.0)))) == 0  # the trap


def test_instance_batch_statistics_hold_for_saturated_and_collapsed_gates() -> None:
    """Per-input σ, σ', log(1 − σ) in float32 and the batch statistics, against float64 on the same float32 logits:
    saturated logits (σ' and 1 − σ underflow naively), a collapsed set (σ equal to 1e-6 across the batch: the std
    of the measured σ must not be lost to cancellation), a short batch and a step without inputs (NaN)."""
    rng = np.random.default_rng(0)
    logit = np.stack(
        [
            rng.uniform(-60, 60, (16, 3)),  # saturated both ways
            np.full((16, 3), 0.7) + rng.normal(0, 4e-6, (16, 3)),  # collapsed: σ' ≈ 0.22, std(σ) ≈ 1e-6
            rng.normal(0, 1, (16, 3)),
            rng.normal(0, 1, (16, 3)),
        ]
    ).astype(np.float32)
    grad = rng.normal(size=logit.shape).astype(np.float32)
    rows = np.array([16, 16, 5, 0])
    logistic = _Logistic.of(logit)
    ref = expit(logit.astype(np.float64))
    np.testing.assert_allclose(logistic.value, ref, rtol=5e-7)
    np.testing.assert_array_equal(logistic.dsigmoid, rf.dsigmoid_from_logit(logit))
    np.testing.assert_allclose(logistic.dsigmoid, ref * expit(-logit.astype(np.float64)), rtol=5e-7)
    np.testing.assert_allclose(logistic.log_one_minus, -np.logaddexp(0, logit.astype(np.float64)), rtol=5e-7)
    series, _ = _batch_statistics(logit, grad, rows)
    measured = logistic.value.astype(np.float64)  # σ as measured, in float32: the std is of these numbers
    for s, r in enumerate(rows[:3]):
        np.testing.assert_allclose(series["value"][s], measured[s, :r].mean(0), rtol=1e-6)
        np.testing.assert_allclose(series["value_std"][s], measured[s, :r].std(0), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(series["logit"][s], logit[s, :r].astype(np.float64).mean(0), rtol=1e-6)
        np.testing.assert_allclose(series["grad"][s], grad[s, :r].astype(np.float64).sum(0), rtol=1e-5)
    assert 5e-7 < series["value_std"][1].min() and series["value_std"][1].max() < 2e-6
    assert all(np.isnan(v[3]).all() for v in series.values())


def test_factors_leave_out_an_input_without_gradient() -> None:
    """An input whose ∂L/∂ũ is 0 (a loss that ignores it: its ratio is 0/0) is left out of the geometric means
    instead of making the whole step NaN; the other inputs' factors are those of a float64 computation."""
    rng = np.random.default_rng(0)
    logit = rng.normal(size=(2, 4, 3)).astype(np.float32)
    G, u = rng.normal(size=(2, 4, 3, 5)), rng.normal(size=(2, 4, 3, 5))
    G[0, 1] = 0.0
    gg, dot, uu = (np.einsum("sbgd,sbgd->sbg", a, b) for a, b in ((G, G), (G, u), (u, u)))
    rows = np.array([4, 4])
    out = _factors(_Logistic.of(logit), gg, dot, uu, rows)
    for step, inputs in ((0, [0, 2, 3]), (1, [0, 1, 2, 3])):
        g, a, b = logit[step, inputs].astype(np.float64), G[step, inputs], u[step, inputs]
        cos = np.abs(np.einsum("bgd,bgd->bg", a, b)) / np.linalg.norm(a, axis=2) / np.linalg.norm(b, axis=2)
        want = {"factor_sigma": 1 - expit(g), "factor_norm": np.linalg.norm(b, axis=2), "factor_cos": cos}
        for k, v in want.items():
            np.testing.assert_allclose(out[k][step], np.exp(np.log(v).mean(0)), rtol=1e-5, err_msg=f"{k} {step}")
    np.testing.assert_allclose(out["grad_task"][0], (rf.dsigmoid_from_logit(logit[0]) * dot[0]).sum(0), rtol=1e-5)


@pytest.mark.parametrize("kind", ["instance", "frozen", "length"])
def test_products_are_the_gradient_autograd_computed(kind: str) -> None:
    """Per gate (and input), ‖G‖², ⟨G, u⟩ and ‖u‖² summed over two gated() calls, against float64 sums: an instance
    gate's ⟨G, u⟩ comes from autograd's ∂L/∂σ of each call (a direct use of σ, like a regulariser, must not reach
    it); a frozen instance gate, whose σ needs no gradient, and a static gate reduce it on the device."""
    g = torch.Generator().manual_seed(0)
    static = kind == "length"
    gate = Gate(3, kind if static else "instance", feature_dim=None if static else 5, vector_dim=4 + 6, generator=g)
    gate.requires_grad_(kind != "frozen")
    gate.capture = True
    lead = (3,) if static else (7, 3)
    u1 = torch.randn(3, 4, generator=g).requires_grad_()  # shared by every input, as the demo's tokens are
    u2 = torch.randn(*lead, 2, 3, generator=g).requires_grad_()
    w1, w2 = torch.randn(*lead, 4, generator=g), torch.randn(*lead, 2, 3, generator=g)
    values = gate() if static else gate(torch.randn(7, 5, generator=g))
    loss = (gate.gated(values, u1.expand(*lead, 4)) * w1).sum() + (gate.gated(values, u2) * w2).sum()
    (loss + 5.0 * values.sum()).backward()
    assert [part.scale is None for part in gate.parts] == [kind != "instance"] * 2
    products = _products(gate.parts, lead)
    assert products is not None
    G = torch.cat([w1, w2.flatten(-2)], -1).double()
    u = torch.cat([u1.expand(*lead, 4), u2.flatten(-2)], -1).detach().double()
    for got, want in zip(products, [(G * G).sum(-1), (G * u).sum(-1), (u * u).sum(-1)], strict=True):
        assert got.shape == lead and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)


def test_recording_leaves_training_bitwise_unchanged(tmp_path: Path) -> None:
    """The demo model trained 6 steps with full recording (capture, every gated vector's gradient, the probe, two
    block flushes) ends with the same parameters, to the last bit, as without: the probe only reads."""
    from recorders.train.demo import DemoConfig, DemoModel, demo_optimizer

    cfg = DemoConfig(batch=16)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, cfg.batch, cfg.in_dim, generator=g), torch.randint(5, (6, cfg.batch), generator=g)

    def train(probe_path: Path | None) -> list[torch.Tensor]:
        model = DemoModel(cfg, torch.Generator().manual_seed(0))
        optimizer = demo_optimizer(model, cfg)
        probe = watch(model, optimizer, prompts={"ctx": model.ctx}, block=4) if probe_path else None
        with contextlib.ExitStack() as stack:
            if probe and probe_path:
                probe.attach(stack.enter_context(rf.RecordingWriter(probe_path, probe.layout, **WRITER)))
            for step in range(6):
                loss = F.cross_entropy(model(x[step])[:, :5], y[step])
                optimizer.zero_grad()
                loss.backward()
                if probe:
                    probe.after_backward(step, 0, cfg.lr, {"total": loss})
                optimizer.step()
            assert bool(model.instance_gates.parts) == bool(probe)
            if probe:
                probe.close()
        return [p.detach().clone() for p in model.parameters()]

    recorded, plain = train(tmp_path / "r.h5"), train(None)
    assert all(torch.equal(a, b) for a, b in zip(recorded, plain, strict=True))
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert rec.n_steps == 6


def test_gated_keeps_nothing_without_a_declared_vector() -> None:
    """A gate without ``vector_dim`` records no ratio factors, so capture keeps neither ũ nor its gradient (only the
    logits, for ∂L/∂g)."""
    gate = Gate(3, "instance", feature_dim=5)
    gate.capture = True
    values = gate(torch.randn(2, 5))
    out = gate.gated(values, torch.randn(2, 3, 4))
    out.sum().backward()
    assert gate.parts == [] and not out.retains_grad and gate.last_logits is not None
    assert gate.last_logits.grad is not None


def test_probe_never_syncs_between_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, prompts={"ctx": model.ctx}, tensors={"ctx": (model.ctx, 2)}, block=8)
    w = rf.RecordingWriter(
        tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu", flush_seconds=1e9
    )
    probe.attach(w)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("host sync inside after_backward")

    with monkeypatch.context() as m:
        for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            m.setattr(torch.Tensor, name, forbidden)
        with pytest.raises(AssertionError):  # the trap is armed
            bool(torch.ones(()))
        for step, (x, y) in enumerate(_batches(7)):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            probe.after_backward(step, 0, 0.1, {"total": loss})
            optimizer.step()
    assert w._pending == 0  # nothing reached the writer before the flush
    probe.close()
    w.close()
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert rec.n_steps == 7
        steps, grads = rec.tensor("ctx")
        np.testing.assert_array_equal(steps, [0, 2, 4, 6])
        assert grads.shape == (4, 4, 8)


def test_block_boundaries_and_missing_gradients(tmp_path: Path, norm_path: str) -> None:
    """Rows cross several blocks in order; a group whose parameters got no gradient records NaN, not 0."""
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, prompts={"ctx": model.ctx}, block=3)
    with rf.RecordingWriter(
        tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu", flush_every=1
    ) as w:
        probe.attach(w)
        for step, (x, y) in enumerate(_batches(7)):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model.head(x), y)  # gates and context unused: no gradient
            loss.backward()
            probe.after_backward(10 + step, step // 4, 0.1 * step, {"total": loss})
        probe.close()
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        np.testing.assert_array_equal(rec.steps(), np.arange(10, 17))
        np.testing.assert_array_equal(rec.read(rf.EPOCH), [0, 0, 0, 0, 1, 1, 1])
        np.testing.assert_allclose(rec.read(rf.LR), 0.1 * np.arange(7))
        assert np.isnan(rec.read(rf.grad_norm_path("group0"))).all()
        assert np.isfinite(rec.read(rf.grad_norm_path("head"))).all()
        assert np.isnan(rec.read(rf.gate_path("ctx_gates", "grad"))).all()
        assert np.isfinite(rec.read(rf.gate_path("ctx_gates", "value"))).all()


def test_instance_gates_with_changing_batch_sizes(tmp_path: Path) -> None:
    """Batches of 4, then 6 (the buffer grows mid-block), 2 (a short last batch over stale rows), none (the gate
    is not called: NaN, not the previous step's numbers, nor those of a no-grad evaluation of 9 inputs run just
    before), 6: each step's instance statistics equal a float64 computation on that step's inputs alone."""
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, block=8)
    g = torch.Generator().manual_seed(3)
    sizes = (4, 6, 2, 0, 6)
    expected = []
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu") as w:
        probe.attach(w)
        for step, size in enumerate(sizes):
            x, y = torch.randn(max(size, 1), 8, generator=g), torch.randint(3, (max(size, 1),), generator=g)
            optimizer.zero_grad()
            if size:
                ref = copy.deepcopy(model).double()
                logits = ref.inst.proj(x.double())
                (bias_grad,) = torch.autograd.grad(F.cross_entropy(ref(x.double()), y), [ref.inst.proj.bias])
                sig = torch.sigmoid(logits).detach()
                expected.append(
                    (
                        logits.detach().mean(0),
                        sig.mean(0),
                        (sig * (1 - sig)).mean(0),
                        sig.std(0, correction=0),
                        bias_grad,
                    )
                )
                F.cross_entropy(model(x), y).backward()
            else:
                with torch.no_grad():
                    model(torch.randn(9, 8, generator=g))  # an evaluation: neither recorded nor growing the buffer
                F.cross_entropy(model.head(x), y).backward()  # a step whose forward skips the gates
                expected.append(None)
            probe.after_backward(step, 0, 0.1, {})
            optimizer.step()
        assert probe._capacity == [6]
        probe.close()
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        recorded = [rec.read(rf.gate_path("inst", k)) for k in ("logit", "value", "dsigmoid", "value_std", "grad")]
    for step, want in enumerate(expected):
        if want is None:
            assert all(np.isnan(series[step]).all() for series in recorded), step
            continue
        for series, value in zip(recorded, want, strict=True):
            np.testing.assert_allclose(series[step], value.numpy(), rtol=1e-4, atol=1e-7, err_msg=f"step {step}")


def test_a_step_that_skips_a_gate_records_nan_factors(tmp_path: Path) -> None:
    """A static gate with ratio factors, applied at steps 0 and 2 and skipped at step 1 (the context is used
    ungated): step 1's factors and gradient are NaN, not the last step's ∂L/∂ũ against this step's u."""
    g = torch.Generator().manual_seed(0)
    ctx = nn.Parameter(torch.randn(4, 8, generator=g))
    gate = Gate(4, "length", prompt="ctx", init="uniform", vector_dim=8, generator=g)
    model = nn.ModuleDict({"gate": gate})
    optimizer = torch.optim.SGD([ctx, *gate.parameters()], lr=0.1)
    probe = watch(model, optimizer, prompts={"ctx": ctx})
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, **WRITER) as w:
        probe.attach(w)
        for step, use_gate in enumerate((True, False, True)):
            tokens = gate.gated(gate(), ctx) if use_gate else ctx
            optimizer.zero_grad()
            (torch.randn(3, 8, generator=g) @ tokens.T).logsumexp(1).mean().backward()
            probe.after_backward(step, 0, 0.1, {})
            optimizer.step()
        probe.close()
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        for k in ("factor_cos", "grad_task", "grad"):
            series = rec.read(rf.gate_path("gate", k))
            assert np.isfinite(series[[0, 2]]).all() and np.isnan(series[1]).all(), k


def test_a_wrong_vector_dim_is_one_line_naming_the_gate_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared vector_dim other than what gated() scales is refused on both the whole-copy and the device path
    (a real CLIP's 16 × 512 context takes the latter), naming the gate set and the length to declare."""
    for limit in (4096, 0):
        monkeypatch.setattr("recorders.train.probes.RAW_GRADIENT_LIMIT", limit)
        ctx = nn.Parameter(torch.randn(4, 8))
        gate = Gate(4, "length", prompt="ctx", vector_dim=6)
        probe = watch(nn.ModuleDict({"gate": gate}), torch.optim.SGD([ctx, *gate.parameters()], lr=0.1))
        with rf.RecordingWriter(tmp_path / f"{limit}.h5", probe.layout, **WRITER) as w:
            probe.attach(w)
            gate.gated(gate(), ctx).sum().backward()
            with pytest.raises(ValueError, match=r"gate set 'gate' declares vector_dim 6 .* declare vector_dim=8"):
                probe.after_backward(0, 0, 0.1, {})


def _steps(model: Tiny, optimizer: torch.optim.Optimizer, probe, n: int) -> None:
    for step, (x, y) in enumerate(_batches(n)):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        probe.after_backward(step, 0, 0.1, {})
        optimizer.step()


def test_the_steps_before_a_failure_reach_the_file(tmp_path: Path) -> None:
    """An exception inside the documented ``with RecordingWriter(...)`` block ends the recording ``failed`` with the
    probe's buffered rows in it (the steps that led to the failure), not an empty file."""
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, prompts={"ctx": model.ctx}, tensors={"ctx": (model.ctx, 4)})
    with pytest.raises(FloatingPointError), rf.RecordingWriter(tmp_path / "r.h5", probe.layout, **WRITER) as w:
        probe.attach(w)
        _steps(model, optimizer, probe, 10)
        raise FloatingPointError("loss diverged")
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert rec.status == "failed" and "loss diverged" in rec.attrs["error"]
        np.testing.assert_array_equal(rec.steps(), np.arange(10))
        assert np.isfinite(rec.read(rf.gate_path("ctx_gates", "value"))).all()
        np.testing.assert_array_equal(rec.tensor("ctx")[0], [0, 4, 8])


def test_a_probe_closed_after_its_writer_loses_nothing(tmp_path: Path) -> None:
    """The writer takes the probe's rows when it closes, so ``probe.close()`` after the with block has nothing left
    to write and raises nothing; writing to a closed writer is a one-line error saying so (not a disk error)."""
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer)
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, **WRITER) as w:
        probe.attach(w)
        _steps(model, optimizer, probe, 3)
    probe.close()
    assert not model.inst.capture
    with pytest.raises(rf.RecordingError, match="already closed; write to it .* inside its with block"):
        w.add_event(3, "note")
    with pytest.raises(RuntimeError, match="this probe is closed"):  # its gates no longer capture: NaN rows
        _steps(model, optimizer, probe, 1)
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert rec.status == "complete" and rec.n_steps == 3


def test_a_module_with_sparse_gradients_is_refused_at_watch() -> None:
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4, sparse=True), "gate": Gate(4, "length")})
    with pytest.raises(ValueError, match="module 'emb' makes sparse gradients.*sparse=False"):
        watch(model, torch.optim.SGD(model.parameters(), lr=0.1))
    watch(model, torch.optim.SGD(model["gate"].parameters(), lr=0.1))  # the embedding is not optimised: accepted


def test_after_backward_before_attach_is_refused_without_breaking_the_probe(tmp_path: Path) -> None:
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, block=2)
    with pytest.raises(RuntimeError, match=r"attach a RecordingWriter before recording"):
        _steps(model, optimizer, probe, 1)
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, **WRITER) as w:
        probe.attach(w)
        with pytest.warns(UserWarning, match="ran 2 forward passes"):  # the refused step's forward was not read
            _steps(model, optimizer, probe, 5)
        probe.close()
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert rec.n_steps == 5


def test_gradient_accumulation_is_named_once(tmp_path: Path) -> None:
    """Two micro-batches per optimiser step: the probe can only record the last forward's per-input series and
    factors, and says so once (not every step)."""
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer)
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, **WRITER) as w:
        probe.attach(w)
        with pytest.warns(UserWarning) as caught:
            for step, (x, y) in enumerate(_batches(6)[::2]):
                optimizer.zero_grad()
                for xs, ys in ((x[:3], y[:3]), (x[3:], y[3:])):
                    F.cross_entropy(model(xs), ys).backward()
                probe.after_backward(step, 0, 0.1, {})
                optimizer.step()
        probe.close()
    assert len(caught) == 1 and "gate set 'inst' ran 2 forward passes" in str(caught[0].message)


def test_slow_steps_are_flushed_after_flush_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial block goes out once the writer's flush_seconds have passed (the clock is faked, not waited on)."""
    now = [0.0]
    monkeypatch.setattr("recorders.train.probes.time.monotonic", lambda: now[0])
    model = Tiny()
    optimizer = _optimizer(model)
    probe = watch(model, optimizer, block=100)
    with rf.RecordingWriter(
        tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu", flush_every=1, flush_seconds=60.0
    ) as w:
        probe.attach(w)
        x, y = _batches(1)[0]
        F.cross_entropy(model(x), y).backward()
        for step, seconds in enumerate((1.0, 2.0, 61.0, 62.0)):
            now[0] = seconds
            probe.after_backward(step, 0, 0.1, {})
        assert w._length == 3  # the third step crossed 60 s: three rows are in the file, the fourth is buffered
        probe.close()
        assert w._length == 4


def test_attach_refuses_a_writer_with_another_layout(tmp_path: Path) -> None:
    model = Tiny()
    probe = watch(model, _optimizer(model))
    with rf.RecordingWriter(tmp_path / "r.h5", rf.Layout(), config={}, method="t", seed=0, device="cpu") as w:
        with pytest.raises(ValueError, match="probe.layout"):
            probe.attach(w)


def _series(path: Path) -> dict[str, np.ndarray]:
    with rf.Recording.open(path) as rec:
        return {p: rec.read(p) for p in rec.layout.step_series()} | {"eval": rec.eval_table()["base_acc"]}


def test_demo_is_deterministic_and_recorded(tmp_path: Path, demo_recording: Path) -> None:
    again = _series(run_demo(tmp_path / "again.h5", steps=40, flush_every=16))
    first = _series(demo_recording)
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    other = _series(run_demo(tmp_path / "other.h5", steps=40, seed=1))
    assert not np.array_equal(first[rf.loss_path("total")], other[rf.loss_path("total")])
    with rf.Recording.open(demo_recording) as rec:
        assert (rec.method, rec.dataset, rec.status, rec.n_steps) == ("demo", "random", "complete", 40)
        assert rec.config["steps"] == 40 and rec.config["flush_every"] == 16
        assert {g.role for g in rec.layout.groups} == {"prompt", "gate"}
        assert set(rec.gate_sets) == {"ctx_gates", "instance_gates"}
        ev = rec.eval_table()
        assert list(ev["step"]) == [39]  # last step (evaluations every 100 steps otherwise)
        assert 0 <= ev["base_acc"][0] <= 1 and 0 <= ev["novel_acc"][0] <= 1


def test_demo_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = run_demo(steps=2, seed=3)
    assert path.parent == Path("recordings") and path.name.startswith("demo-random-s3-") and path.suffix == ".h5"
    assert (tmp_path / path).exists()


def test_close_gives_the_gates_back_as_watch_found_them(tmp_path: Path) -> None:
    """After close() an instance gate no longer captures, and no graph tensor of the last step is kept alive."""
    model = Tiny()
    optimizer = _optimizer(model)
    assert model.inst.capture is False
    probe = watch(model, optimizer, prompts={"ctx": model.ctx})
    assert model.inst.capture is True
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu") as w:
        probe.attach(w)
        x, y = _batches(1)[0]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        probe.after_backward(0, 0, 0.1, {"total": loss})
        assert model.inst.last_logits is not None and model.inst.last_logits.grad_fn is not None
        probe.close()
    assert model.inst.capture is False and model.inst.last_logits is None
    model(x)  # a forward after close keeps nothing
    assert model.inst.last_logits is None
