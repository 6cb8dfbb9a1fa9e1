"""The exact gate/prompt gradient-ratio factors, checked against autograd on the real methods (float64 copies).

For every gate kind the recorded product (1 − σ)·‖u‖·|cos| must equal a ratio that autograd computes from
parameter gradients alone, without the probe's Gram matrices: |∂L_through/∂g_i| over the norm of the gradient of
the vector the gate scales (for a context token: ‖∂L/∂C_i‖; for a depth gate: ∂L/∂P^(d) divided row-wise by the
length gates' σ; for CoCoOp-gating, per input, from a batch of one). ``L_through`` is the loss without the terms
that act on gate values directly, taken without the equilibrium rescale; those terms are checked one by one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recorders import format as rf
from recorders.methods.gates import equilibrium_scale, find_gates
from recorders.methods.registry import build_method
from recorders.train.config import build_config
from recorders.train.loop import loss_terms, make_optimizer
from recorders.train.probes import gate_set_name, watch

CLASSES = ["red circle", "green square", "blue triangle", "big yellow star"]
RTOL = 1e-5


@pytest.fixture(scope="module")
def backbone64(tmp_path_factory: pytest.TempPathFactory):
    """A random-init tiny CLIP in float64 (so float32 storage is the only rounding left in the comparison)."""
    from recorders.clip.backbone import load_backbone
    from recorders.clip.pretrain import random_checkpoint

    backbone = load_backbone(str(random_checkpoint(tmp_path_factory.mktemp("tiny-clip"), seed=0)), "cpu")
    backbone.model.double()
    return backbone


def _method(backbone, name: str, **overrides):
    cfg = build_config([("method", name), ("gate_init", "uniform"), *overrides.items()])
    torch.manual_seed(0)
    method = build_method(cfg, backbone).double()
    if name == "cocoop-gating":  # image features reach the meta-net and the instance gate as float32
        method.meta_net.float()
        method.gate.float()
    return method, cfg


def _inputs(method, backbone, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if method.needs_pixels:
        x = torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(batch, backbone.embed_dim, generator=g, dtype=torch.float64)
    return x, torch.randint(len(CLASSES), (batch,), generator=g)


def _losses(method, classes, x, y) -> dict[str, torch.Tensor]:
    out = method(x, classes)
    losses = {"ce": F.cross_entropy(out.logits, y), **out.terms}
    losses["total"] = torch.stack(list(losses.values())).sum()
    return losses


def _through(method, classes, x, y) -> torch.Tensor:
    """The loss without the terms that act on gate values directly (what reaches the gates through ũ)."""
    losses = _losses(method, classes, x, y)
    keep = [k for k in losses if k not in ("total", "sparse", "smooth", "entropy")]
    return torch.stack([losses[k] for k in keep]).sum()


def _record(tmp_path: Path, method, cfg, classes, batches):
    """Train ``method`` on ``batches`` with a probe; per step, a float64 reference copy taken before the step."""
    optimizer = make_optimizer(method, cfg)
    probe = watch(
        method,
        optimizer,
        prompts=method.prompt_params(),
        loss_terms=loss_terms(method),
        regularisers=method.gate_regularisers,
        block=2,
    )
    refs = []
    with rf.RecordingWriter(tmp_path / "r.h5", probe.layout, config={}, method="t", seed=0, device="cpu") as w:
        probe.attach(w)
        for step, (x, y) in enumerate(batches):
            ref = copy.deepcopy(method)
            for gate in find_gates(ref).values():
                gate.equilibrium = False  # the reference gradients are the loss's own
            refs.append(ref)
            losses = _losses(method, classes, x, y)
            optimizer.zero_grad()
            losses["total"].backward()
            probe.after_backward(step, 0, 0.01, losses)
            optimizer.step()
        probe.close()
    return rf.Recording.open(tmp_path / "r.h5"), refs


def _bimodal_leaves(method) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Make adaptive-bimaple's bimodal prompts (P̂_t, P̂_v per depth) leaf copies of their values, so autograd gives
    the gradient of the vector each length gate scales; the cycle term is kept, detached (it reads the prompt
    parameters, never the gates)."""
    text, vision, terms = method.bimodal_prompts()
    text = [t.detach().requires_grad_() for t in text]
    vision = [v.detach().requires_grad_() for v in vision]
    frozen_terms = {k: v.detach() for k, v in terms.items()}
    method.bimodal_prompts = lambda: (text, vision, dict(frozen_terms))
    return text, vision


def _product(rec: rf.Recording, name: str, i: int) -> np.ndarray:
    return np.prod([rec.row(rf.gate_path(name, k), i).astype(np.float64) for k in rf.FACTOR_SERIES[:3]], axis=0)


@pytest.mark.slow
@pytest.mark.parametrize(("equilibrium", "on_device"), [(False, False), (True, True)])
def test_coop_gating_factors_equal_the_autograd_ratio(
    tmp_path: Path, backbone64, equilibrium: bool, on_device: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``on_device``: the gate's ∂L/∂ũ and u are reduced on the device, as for a real CLIP's context (16 × 512
    values exceed RAW_GRADIENT_LIMIT), instead of copied whole."""
    if on_device:
        monkeypatch.setattr("recorders.train.probes.RAW_GRADIENT_LIMIT", 0)
    method, cfg = _method(backbone64, "coop-gating", grad_equilibrium=equilibrium, gate_entropy=0.05)
    classes = method.encode_classes(CLASSES)
    batches = [_inputs(method, backbone64, 4, seed) for seed in range(3)]
    rec, refs = _record(tmp_path, method, cfg, classes, batches)
    with rec:
        spec = rec.gate_sets["gate"]
        assert spec.factors and spec.terms == ("entropy",) and spec.equilibrium == equilibrium
        for i, (ref, (x, y)) in enumerate(zip(refs, batches, strict=True)):
            through = _through(ref, classes, x, y)
            g_task, g_ctx = torch.autograd.grad(through, [ref.gate.logits, ref.ctx])
            losses = _losses(ref, classes, x, y)
            (g_entropy,) = torch.autograd.grad(losses["entropy"], [ref.gate.logits])
            ratio = g_task.abs() / torch.linalg.vector_norm(g_ctx, dim=1)
            np.testing.assert_allclose(_product(rec, "gate", i), ratio.numpy(), rtol=RTOL)
            np.testing.assert_allclose(rec.row(rf.gate_path("gate", "grad_task"), i), g_task.numpy(), rtol=RTOL)
            np.testing.assert_allclose(
                rec.row(rf.gate_path("gate", "grad_entropy"), i), g_entropy.numpy(), rtol=RTOL, atol=1e-12
            )
            alpha = equilibrium_scale(ref.gate.logits.detach()) if equilibrium else 1.0
            recorded = rec.row(rf.gate_path("gate", "grad"), i)
            np.testing.assert_allclose(recorded, (alpha * (g_task + g_entropy)).numpy(), rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "equilibrium", "on_device"), [(1, False, False), (4, True, True)])
def test_cocoop_gating_factors_are_of_the_gated_vector(
    tmp_path: Path, backbone64, batch: int, equilibrium: bool, on_device: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance gate scales C_i + π(x): per input, |∂ℓ_b/∂g_{b,i}| / ‖∂ℓ_b/∂u_{b,i}‖ comes from a batch of one
    (C_i enters only through u_i, so ∂ℓ_b/∂C_i = ∂ℓ_b/∂u_{b,i}; ∂ℓ_b/∂bias_i = ∂ℓ_b/∂g_{b,i}); the recorded
    product is its geometric mean over the batch, and ``grad_task`` the batch's through-part of the bias gradient.
    Small vectors are copied whole and reduced on the host; ``on_device`` forces the device reduction."""
    if on_device:
        monkeypatch.setattr("recorders.train.probes.RAW_GRADIENT_LIMIT", 0)
    method, cfg = _method(backbone64, "cocoop-gating", grad_equilibrium=equilibrium, gate_entropy=0.05)
    classes = method.encode_classes(CLASSES)
    batches = [_inputs(method, backbone64, batch, seed) for seed in range(2)]
    rec, refs = _record(tmp_path, method, cfg, classes, batches)
    with rec:
        spec = rec.gate_sets["gate"]
        assert spec.kind == "instance" and spec.factors and spec.terms == ("entropy",)
        for i, (ref, (x, y)) in enumerate(zip(refs, batches, strict=True)):
            logs = []
            for b in range(batch):
                through = _through(ref, classes, x[b : b + 1], y[b : b + 1])
                g_bias, g_ctx = torch.autograd.grad(through, [ref.gate.proj.bias, ref.ctx])
                logs.append(torch.log(g_bias.abs() / torch.linalg.vector_norm(g_ctx, dim=1)))
            ratio = torch.exp(torch.stack(logs).mean(0))
            np.testing.assert_allclose(_product(rec, "gate", i), ratio.numpy(), rtol=RTOL)
            losses = _losses(ref, classes, x, y)
            (g_task,) = torch.autograd.grad(_through(ref, classes, x, y), [ref.gate.proj.bias])
            (g_entropy,) = torch.autograd.grad(losses["entropy"], [ref.gate.proj.bias])
            np.testing.assert_allclose(rec.row(rf.gate_path("gate", "grad_task"), i), g_task.numpy(), rtol=RTOL)
            np.testing.assert_allclose(rec.row(rf.gate_path("gate", "grad_entropy"), i), g_entropy.numpy(), rtol=RTOL)
            if batch == 1:  # the ratio every other analysis uses: |bias gradient| / ‖∂L/∂C_i‖
                g_ctx = torch.autograd.grad(_through(ref, classes, x, y), [ref.ctx])[0]
                np.testing.assert_allclose(
                    _product(rec, "gate", i), (g_task.abs() / torch.linalg.vector_norm(g_ctx, dim=1)).numpy(), rtol=RTOL
                )


@pytest.mark.slow
@pytest.mark.parametrize(("equilibrium", "on_device"), [(False, False), (True, True)])
def test_adaptive_bimaple_length_and_depth_factors(
    tmp_path: Path, backbone64, equilibrium: bool, on_device: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Length gate i of layer d scales token i's bimodal prompt B_i^(d) = [P̂_t ‖ P̂_v] (built in the forward pass);
    depth gate d scales the layer's length-gated prompts u_d = σ(g^(d))·B^(d), whose gradient is ∂L/∂B^(d) divided
    row-wise by σ(g^(d)). Autograd gives ∂L/∂B^(d) = [∂L/∂P̂_t ‖ ∂L/∂P̂_v] on a reference whose bimodal prompts are
    leaf copies. With the sparse, smooth and entropy regularisers and the cycle loss on (the cycle loss reads the
    prompt parameters, not the gated prompts, so it does not reach the gates). ``on_device``: the gates' vectors are
    reduced on the device, as for a real CLIP's depth gate (9 layers × 2 tokens × (512 + 768) values)."""
    if on_device:
        monkeypatch.setattr("recorders.train.probes.RAW_GRADIENT_LIMIT", 0)
    method, cfg = _method(
        backbone64,
        "adaptive-bimaple",
        grad_equilibrium=equilibrium,
        gate_entropy=0.05,
        lambda_sparse=0.1,
        lambda_smooth=0.1,
        prompt_depth=2,
    )
    classes = method.encode_classes(CLASSES)
    batches = [_inputs(method, backbone64, 2, seed) for seed in range(2)]
    rec, refs = _record(tmp_path, method, cfg, classes, batches)
    with rec:
        names = [gate_set_name(f"length_gates.{d}") for d in range(method.depth)]
        assert set(rec.gate_sets) == {*names, "depth_gate"}
        assert rec.gate_sets["depth_gate"].terms == ("sparse", "smooth", "entropy")
        bimodal_width = backbone64.text_width + backbone64.vision_width
        assert rec.gate_sets["depth_gate"].vector_dim == method.n_ctx * bimodal_width
        for i, (ref, (x, y)) in enumerate(zip(refs, batches, strict=True)):
            text, vision = _bimodal_leaves(ref)
            through = _through(ref, classes, x, y)
            logits = [*(g.logits for g in ref.length_gates), ref.depth_gate.logits]
            grads = torch.autograd.grad(through, [*logits, *text, *vision])
            g_len, g_depth = grads[: ref.depth], grads[ref.depth]
            g_text, g_vision = grads[ref.depth + 1 : 2 * ref.depth + 1], grads[2 * ref.depth + 1 :]
            depth_norm = []
            for d, name in enumerate(names):
                g_bimodal = torch.cat([g_text[d], g_vision[d]], -1)  # ∂L/∂B^(d): (n_ctx, D_t + D_v)
                ratio = g_len[d].abs() / torch.linalg.vector_norm(g_bimodal, dim=1)
                np.testing.assert_allclose(_product(rec, name, i), ratio.numpy(), rtol=RTOL, err_msg=name)
                np.testing.assert_allclose(rec.row(rf.gate_path(name, "grad_task"), i), g_len[d].numpy(), rtol=RTOL)
                sigma = torch.sigmoid(ref.length_gates[d].logits)
                depth_norm.append(torch.linalg.vector_norm(g_bimodal / sigma[:, None]))
            ratio = g_depth.abs() / torch.stack(depth_norm)
            np.testing.assert_allclose(_product(rec, "depth_gate", i), ratio.detach().numpy(), rtol=RTOL)
            losses = _losses(ref, classes, x, y)
            for term in ("sparse", "smooth", "entropy"):
                (g_term,) = torch.autograd.grad(losses[term], [ref.depth_gate.logits], retain_graph=True)
                recorded = rec.row(rf.gate_path("depth_gate", rf.term_series(term)), i)
                np.testing.assert_allclose(recorded, g_term.numpy(), rtol=RTOL, atol=1e-12, err_msg=term)
            alpha = equilibrium_scale(ref.depth_gate.logits.detach()) if equilibrium else 1.0
            total = sum(
                rec.row(rf.gate_path("depth_gate", k), i).astype(np.float64)
                for k in ("grad_task", "grad_sparse", "grad_smooth", "grad_entropy")
            )
            np.testing.assert_allclose(
                rec.row(rf.gate_path("depth_gate", "grad"), i),
                alpha.numpy() * total if equilibrium else total,
                rtol=1e-4,
            )
