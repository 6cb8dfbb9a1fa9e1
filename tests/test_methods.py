"""Methods on a random-init tiny CLIP: zero-shot equivalence, hand-counted parameters, batching, learning.

The tiny CLIP (the built-in config, random weights; widths are read from its config) is random, so nothing here
depends on pretraining; the checks are exact identities or loss decreases on a fixed batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recorders.clip.encoders import text_features
from recorders.format.errors import ConfigError
from recorders.methods.registry import METHODS, REGISTRY, build_method
from recorders.train.config import build_config
from recorders.train.loop import make_optimizer

CLASSES = ["red circle", "green square", "blue triangle", "big yellow star"]


def random_backbone(tmp_path_factory: pytest.TempPathFactory):
    """A frozen random-init tiny CLIP with the world tokenizer, on CPU."""
    from recorders.clip.backbone import load_backbone
    from recorders.clip.pretrain import random_checkpoint

    return load_backbone(str(random_checkpoint(tmp_path_factory.mktemp("tiny-clip"), seed=0)), "cpu")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory):
    return random_backbone(tmp_path_factory)


def run_config(method: str, **overrides):
    return build_config([("method", method), *overrides.items()])


def make(backbone, method: str, **overrides):
    cfg = run_config(method, **overrides)
    torch.manual_seed(0)
    return build_method(cfg, backbone)


def inputs_for(method, backbone, batch: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if method.needs_pixels:
        return torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=g)
    return torch.randn(batch, backbone.embed_dim, generator=g)


def zero_shot_logits(backbone, image_features: torch.Tensor) -> torch.Tensor:
    """CLIP's own zero-shot logits with "a photo of a {class}." through transformers' get_text_features."""
    with torch.no_grad():
        ids = backbone.tokenize([f"a photo of a {name}." for name in CLASSES])
        text = backbone.model.get_text_features(input_ids=ids).pooler_output
        scale = backbone.model.logit_scale.exp()
        return scale * F.normalize(image_features, dim=-1) @ F.normalize(text, dim=-1).T


@pytest.mark.parametrize("name", METHODS)
def test_registry_gated_flag_matches_the_built_model(tiny_backbone, name):
    """The registry's ``gated`` (what the config checks without torch) is what the built model holds."""
    assert make(tiny_backbone, name).has_gates == REGISTRY[name].gated


def test_coop_with_photo_init_is_zero_shot_clip(tiny_backbone):
    coop = make(tiny_backbone, "coop")
    image = inputs_for(coop, tiny_backbone, batch=6)
    with torch.no_grad():
        logits = coop(image, coop.encode_classes(CLASSES)).logits
    torch.testing.assert_close(logits, zero_shot_logits(tiny_backbone, image), atol=1e-5, rtol=0)


def test_coop_gating_with_open_gates_is_zero_shot_clip(tiny_backbone):
    method = make(tiny_backbone, "coop-gating")
    with torch.no_grad():
        method.gate.logits.fill_(float("inf"))  # σ(+inf) = 1 exactly
    image = inputs_for(method, tiny_backbone, batch=6)
    with torch.no_grad():
        logits = method(image, method.encode_classes(CLASSES)).logits
    torch.testing.assert_close(logits, zero_shot_logits(tiny_backbone, image), atol=1e-5, rtol=0)
    with torch.no_grad():  # gates at their init (σ = 0.5) halve the context: not zero-shot any more
        method.gate.logits.zero_()
        halved = method(image, method.encode_classes(CLASSES)).logits
    assert (halved - logits).abs().max() > 1e-3


def expected_counts(config) -> dict[str, int]:
    """Trainable parameters per method, counted by hand from a ``CLIPConfig``'s widths and depths."""
    d, v, e = config.text_config.hidden_size, config.vision_config.hidden_size, config.projection_dim
    j = min(9, config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)  # MaPLe depth J
    h = e // 16
    meta = e * h + h + h * d + d  # CoCoOp meta-net: Linear(E, E/16), ReLU, Linear(E/16, D)
    maple = j * 2 * d + j * (d * v + v)  # J prompt sets of 2 tokens + J couplings D → V
    bimaple = maple + j * 2 * v + j * (v * d + d)  # + J vision prompt sets of 2 tokens + J couplings V → D
    return {
        "coop": 4 * d,
        "coop-gating": 4 * d + 4,
        "cocoop": 4 * d + meta,
        "cocoop-gating": 4 * d + meta + e * 4 + 4,
        "maple": maple,
        "bimaple": bimaple,
        "adaptive-bimaple": bimaple + j * 2 + j,  # + J length gate sets of 2 + J depth gates
    }


@pytest.mark.parametrize("name", METHODS)
def test_trainable_parameter_counts_match_hand_counts(tiny_backbone, name):
    expected = expected_counts(tiny_backbone.model.config)[name]
    method = make(tiny_backbone, name)
    assert method.n_trainable() == expected
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == expected
    assert all(not p.requires_grad for p in tiny_backbone.model.parameters())


def test_variants_change_the_counts_as_documented(tiny_backbone):
    expected = expected_counts(tiny_backbone.model.config)
    matched = make(tiny_backbone, "adaptive-bimaple", variant="param-matched")
    frozen = make(tiny_backbone, "adaptive-bimaple", variant="always-frozen")
    j = matched.depth
    assert matched.n_trainable() == expected["adaptive-bimaple"]  # gates removed, same count of plain scales
    assert {g.role for g in matched.groups()} == {"prompt", "coupling", "other"}
    assert frozen.n_trainable() == expected["adaptive-bimaple"] - j * 2 - j
    assert all(not p.requires_grad for p in frozen.depth_gate.parameters())
    cocoop = make(tiny_backbone, "cocoop-gating", variant="param-matched")
    assert cocoop.n_trainable() == expected["cocoop-gating"]


def test_batched_cocoop_equals_the_reference_per_image_loop(tiny_backbone):
    method = make(tiny_backbone, "cocoop-gating", gate_init="uniform")
    classes = method.encode_classes(CLASSES)
    image = inputs_for(method, tiny_backbone, batch=5)
    labels = torch.tensor([0, 1, 2, 3, 0])
    batched = method(image, classes).logits
    normed = F.normalize(image, dim=-1)
    looped = []
    for b in range(len(image)):  # the reference: one plain text forward of the full prompts per image
        ctx, _ = method.instance_context(normed[b : b + 1])
        text = text_features(method.clip, method.splice(classes, ctx[0]), classes.input_ids)
        looped.append(method.logit_scale() * normed[b] @ F.normalize(text, dim=-1).T)
    looped = torch.stack(looped)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    assert abs((F.cross_entropy(batched, labels) - F.cross_entropy(looped, labels)).item()) < 1e-5


def test_maple_prompts_reach_both_encoders(tiny_backbone):
    method = make(tiny_backbone, "maple")
    classes = method.encode_classes(CLASSES)
    image = inputs_for(method, tiny_backbone)
    loss = F.cross_entropy(method(image, classes).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert method.depth == min(
        9, len(tiny_backbone.model.text_model.encoder.layers), len(tiny_backbone.model.vision_model.encoder.layers)
    )
    for d in range(method.depth):  # deep text prompts and every coupling (vision side) get gradient
        assert method.prompts[d].grad.abs().sum() > 0
        assert method.coupling[d].weight.grad.abs().sum() > 0


def test_bimaple_cycle_loss_is_the_documented_formula(tiny_backbone):
    method = make(tiny_backbone, "bimaple", lambda_cyc=0.5, bimaple_init="random")
    out = method(inputs_for(method, tiny_backbone), method.encode_classes(CLASSES))

    def linear(f, x):
        return x @ f.weight.detach().double().T + f.bias.detach().double()

    expected = 0.0
    for d in range(method.depth):  # both round trips, on the own (ungated) prompts, in float64
        to_v, to_t = method.coupling[d], method.coupling_back[d]
        p_t, p_v = method.prompts[d].detach().double(), method.vision_prompts[d].detach().double()
        expected += ((linear(to_t, linear(to_v, p_t)) - p_t) ** 2).sum(-1).mean() / method.depth
        expected += ((linear(to_v, linear(to_t, p_v)) - p_v) ** 2).sum(-1).mean() / method.depth
    assert float(out.terms["cyc"].detach()) == pytest.approx(0.5 * float(expected), rel=1e-5)


def test_adaptive_bimaple_regularisers(tiny_backbone):
    method = make(
        tiny_backbone, "adaptive-bimaple", gate_init="uniform", lambda_sparse=0.1, lambda_smooth=0.2, gate_entropy=0.3
    )
    with torch.no_grad():  # the values of the terms, not their graph
        out = method(inputs_for(method, tiny_backbone), method.encode_classes(CLASSES))
        lengths = torch.cat([torch.sigmoid(g.logits) for g in method.length_gates]).double()
        depth = torch.sigmoid(method.depth_gate.logits).double()
        assert float(out.terms["sparse"]) == pytest.approx(0.1 * float(lengths.mean() + depth.mean()), rel=1e-5)
        assert float(out.terms["smooth"]) == pytest.approx(0.2 * float(depth.diff().pow(2).mean()), rel=1e-5)
        values = [torch.sigmoid(g.logits).double() for g in method.length_gates] + [depth]
        entropy = torch.stack([-(v * v.log() + (1 - v) * (1 - v).log()).mean() for v in values]).mean()
        assert float(out.terms["entropy"]) == pytest.approx(0.3 * float(entropy), rel=1e-5)
    assert set(method.extra_losses()) == {"cyc", "sparse", "smooth", "entropy"}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_lowers_its_loss_on_a_fixed_batch(tiny_backbone, name):
    method = make(tiny_backbone, name, lr=0.05)
    classes = method.encode_classes(CLASSES)
    image, labels = inputs_for(method, tiny_backbone, batch=8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = make_optimizer(method, run_config(name, lr=0.05))

    def loss() -> torch.Tensor:
        out = method(image, classes)
        return F.cross_entropy(out.logits, labels) + sum(out.terms.values())

    first = float(loss().detach())
    for _ in range(6):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert float(loss().detach()) < first - 1e-3


def test_random_context_init_and_bad_init_text(tiny_backbone):
    method = make(tiny_backbone, "coop", ctx_init="")
    assert method.ctx.std().item() == pytest.approx(0.02, rel=0.3)
    classes = method.encode_classes(CLASSES)
    assert (classes.input_ids[:, 1:5] == 0).all()  # four placeholders after the start token
    with pytest.raises(ConfigError, match="n_ctx"):
        make(tiny_backbone, "coop", n_ctx=8)  # "a photo of a" has only 4 tokens


def test_gate_init_and_equilibrium_reach_the_gates(tiny_backbone):
    method = make(tiny_backbone, "coop-gating", gate_init="biased:2.5", grad_equilibrium=True)
    assert torch.equal(method.gate.logits.detach(), torch.full((4,), 2.5))
    assert method.gate.equilibrium
    cfg = run_config(
        "coop-gating", gate_init="biased:2.5", grad_equilibrium=True, gate_lr_scale=50.0, gate_weight_decay=0.0
    )
    groups = {g["name"]: g for g in make_optimizer(method, cfg).param_groups}
    assert groups["gates"]["lr"] == pytest.approx(50 * cfg.lr) and groups["gates"]["weight_decay"] == 0.0
    assert groups["ctx"]["lr"] == pytest.approx(cfg.lr) and groups["ctx"]["weight_decay"] == cfg.weight_decay
