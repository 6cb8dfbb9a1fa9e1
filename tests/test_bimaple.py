"""MaPLe pinned, BiMaPLe and AdaptiveBiMaPLe as the paper defines them, and the variants that isolate adaptivity.

Every check runs on the random-init tiny CLIP (widths from its config) or, for parameter counts, on a ViT-B/16-shaped
``CLIPModel`` built on the meta device (no weights, no download).
"""

from __future__ import annotations

import pytest
import torch
from test_methods import CLASSES, inputs_for, make, random_backbone, run_config

# MaPLe on the random tiny CLIP (seed 0 checkpoint), method seed 0, two images from seed 3: recorded before the
# BiMaPLe rewrite, so MaPLe stays numerically what it was.
MAPLE_LOGITS = [
    [-0.8052617311477661, -1.2101197242736816, -2.376044750213623, -0.5364956855773926],
    [-1.4826643466949463, -1.8958606719970703, -2.6177926063537598, -1.4364192485809326],
]
MAPLE_IMAGE = [
    [0.006194178946316242, -0.03890556842088699, -0.03167889639735222, 0.07998854666948318],
    [0.011134677566587925, -0.056779298931360245, -0.009646149352192879, 0.09807998687028885],
]
MAPLE_TEXT = [
    [0.03476821631193161, 0.1074056550860405, -0.006161367055028677, -0.08928931504487991],
    [0.021045483648777008, 0.06286381930112839, -0.025603538379073143, -0.12552358210086823],
    [-0.022757288068532944, 0.03501196205615997, -0.02454224042594433, -0.06524347513914108],
    [0.05210230499505997, 0.01671980880200863, -0.052676405757665634, -0.11114657670259476],
]
MAPLE_PARAM_SUMS = [
    -0.22203664061089512,
    0.07060031376749976,
    -2.929610617175058,
    -0.9645495291188126,
    8.014567288629223,
    -0.192705828580074,
]


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory):
    return random_backbone(tmp_path_factory)


def test_maple_is_pinned(tiny_backbone):
    method = make(tiny_backbone, "maple")
    assert [float(p.detach().double().sum()) for p in method.parameters()] == pytest.approx(MAPLE_PARAM_SUMS, abs=1e-9)
    image = inputs_for(method, tiny_backbone, batch=2, seed=3)
    classes = method.encode_classes(CLASSES)
    with torch.no_grad():
        text = list(method.prompts)
        vision = [f(p) for f, p in zip(method.coupling, text, strict=True)]  # MaPLe: vision prompts are f(P_t)
        image_feats = method.image_features(image, vision)
        text_feats = method.text_features(classes, text[0], text[1:])
        logits = method(image, classes).logits
    torch.testing.assert_close(image_feats[:, :4], torch.tensor(MAPLE_IMAGE), atol=1e-6, rtol=0)
    torch.testing.assert_close(text_feats[:, :4], torch.tensor(MAPLE_TEXT), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, torch.tensor(MAPLE_LOGITS), atol=1e-5, rtol=0)


def vit_b16_backbone():
    """A ViT-B/16-shaped ``Backbone`` (text 512 × 12 layers, vision 768 × 12 layers) whose CLIP lives on the meta
    device: no weights are allocated or downloaded. Enough to build methods (with ``ctx_init = ""``) and count
    their parameters, not to run them."""
    from transformers import CLIPModel

    from recorders.clip.backbone import Backbone, vit_b16_config

    config = vit_b16_config()
    with torch.device("meta"):
        model = CLIPModel(config)
    return Backbone.of(
        model,
        tokenizer=None,
        name="vit-b16-meta",
        fingerprint="",
        device=torch.device("cpu"),
        autocast_dtype=None,
        image_mean=(0.0, 0.0, 0.0),
        image_std=(1.0, 1.0, 1.0),
    )


@pytest.fixture(scope="module")
def vit_backbone():
    return vit_b16_backbone()


def hand_counts(d: int, v: int, j: int, n: int) -> dict[str, int]:
    """Trainable parameters by hand: text width d, vision width v, J = j prompted layers, n tokens per layer."""
    prompts = j * n * d + j * n * v  # P_t^(d), P_v^(d)
    mappings = j * (d * v + v) + j * (v * d + d)  # f_{L→V}^(d) (weight + bias), f_{V→L}^(d)
    gates = j * n + j  # one length gate per token and layer, one depth gate per layer
    return {
        "bimaple": prompts + mappings,
        "adaptive-bimaple": prompts + mappings + gates,
        "param-matched": prompts + mappings + gates,  # a plain scale per gate
        "always-frozen": prompts + mappings,  # gates kept, not trained
    }


def test_hand_counts_at_vit_b16_width_in_numbers():
    counts = hand_counts(512, 768, 9, 2)
    # 9·2·512 + 9·2·768 + 9·(512·768 + 768) + 9·(768·512 + 512) = 9216 + 13824 + 3545856 + 3543552
    assert counts["bimaple"] == 7_112_448 and counts["adaptive-bimaple"] == 7_112_448 + 27


@pytest.mark.parametrize("width", ["tiny", "vit-b16"])
@pytest.mark.parametrize("which", ["bimaple", "adaptive-bimaple", "param-matched", "always-frozen"])
def test_parameter_counts_match_hand_counts_at_two_widths(tiny_backbone, vit_backbone, width, which):
    backbone = tiny_backbone if width == "tiny" else vit_backbone
    config = backbone.model.config
    j = min(9, config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers)
    expected = hand_counts(backbone.text_width, backbone.vision_width, j, 2)[which]
    method_name = "bimaple" if which == "bimaple" else "adaptive-bimaple"
    variant = which if which in ("param-matched", "always-frozen") else "standard"
    method = make(backbone, method_name, variant=variant, ctx_init="")
    assert (backbone.text_width, backbone.vision_width, j) == ((96, 64, 2) if width == "tiny" else (512, 768, 9))
    assert method.n_trainable() == expected
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == expected


def set_inverse_mappings(method, generator: torch.Generator) -> None:
    """Make f_{V→L}∘f_{L→V} the identity on the narrower side (and f_{L→V}∘f_{V→L} on the other side's prompts):
    with Q ``(wide, narrow)`` orthonormal columns and a bias a, narrow → wide is x ↦ Qx + a and wide → narrow is
    y ↦ Qᵀ(y − a); the wider side's prompts are moved into Q's range plus a, where the round trip is exact too."""
    with torch.no_grad():
        for d in range(method.depth):
            to_v, to_t = method.coupling[d], method.coupling_back[d]
            p_t, p_v = method.prompts[d], method.vision_prompts[d]
            narrow_is_text = p_t.shape[1] <= p_v.shape[1]
            up, down = (to_v, to_t) if narrow_is_text else (to_t, to_v)
            narrow, wide = (p_t, p_v) if narrow_is_text else (p_v, p_t)
            q, _ = torch.linalg.qr(
                torch.randn(wide.shape[1], narrow.shape[1], generator=generator, dtype=torch.float64)
            )
            a = torch.randn(wide.shape[1], generator=generator, dtype=torch.float64)
            up.weight.copy_(q)
            up.bias.copy_(a)
            down.weight.copy_(q.T)
            down.bias.copy_(-(q.T @ a))
            wide.copy_(torch.randn(wide.shape[0], narrow.shape[1], generator=generator, dtype=torch.float64) @ q.T + a)


@pytest.mark.parametrize("width", ["tiny", "vit-b16"])
def test_cycle_loss_is_zero_when_the_mappings_invert_each_other(tiny_backbone, vit_backbone, width):
    backbone = tiny_backbone if width == "tiny" else vit_backbone
    method = make(backbone, "bimaple", ctx_init="", bimaple_init="random").double()
    g = torch.Generator().manual_seed(5)
    _, _, before = method.bimodal_prompts()
    assert float(before["cyc"].detach()) > 1e-2  # random mappings are far from inverse
    set_inverse_mappings(method, g)
    _, _, terms = method.bimodal_prompts()
    assert float(terms["cyc"].detach()) < 1e-20  # float64 rounding only
    with torch.no_grad():  # one mapping a little off: the loss notices
        method.coupling_back[0].weight.mul_(1.01)
    assert float(method.bimodal_prompts()[2]["cyc"].detach()) > 1e-6


def test_bimaple_starts_exactly_where_maple_starts(tiny_backbone):
    maple, bimaple = make(tiny_backbone, "maple"), make(tiny_backbone, "bimaple")
    image = inputs_for(maple, tiny_backbone, batch=2, seed=3)
    with torch.no_grad():
        a = maple(image, maple.encode_classes(CLASSES)).logits
        b = bimaple(image, bimaple.encode_classes(CLASSES)).logits
    assert torch.equal(a, b)  # default bimaple_init = "maple": P_v = 0, f_{V→L} bias 0


def test_both_mappings_act_in_the_forward_pass(tiny_backbone):
    method = make(tiny_backbone, "bimaple", lambda_cyc=0.0, bimaple_init="random")
    out = method(inputs_for(method, tiny_backbone), method.encode_classes(CLASSES))
    assert set(out.terms) == {"cyc"} and float(out.terms["cyc"]) == 0.0
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    for d in range(method.depth):  # the cross-entropy alone reaches both prompt sets and both mappings
        for param in (method.prompts[d], method.vision_prompts[d], method.coupling[d].weight):
            assert param.grad.abs().sum() > 0
        assert method.coupling_back[d].weight.grad.abs().sum() > 0


def both_encoders(method, image: torch.Tensor, classes) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features ``(B, E)``, text features ``(C, E)``) with the method's prompts."""
    text, vision, _ = method.encoder_prompts()
    return method.image_features(image, vision), method.text_features(classes, text[0], text[1:])


def test_open_gates_give_bimaple_exactly(tiny_backbone):
    plain = make(tiny_backbone, "bimaple", bimaple_init="random")
    gated = make(tiny_backbone, "adaptive-bimaple", bimaple_init="random", gate_init="uniform")
    for name, param in plain.named_parameters():  # the same seed draws the same prompts and mappings
        assert torch.equal(param, gated.get_parameter(name))
    image = inputs_for(plain, tiny_backbone, batch=2, seed=3)
    classes = plain.encode_classes(CLASSES)
    with torch.no_grad():
        expected = plain(image, classes)
        half_open = gated(image, classes).logits
        for gate in [*gated.length_gates, gated.depth_gate]:
            gate.logits.fill_(float("inf"))  # σ(+inf) = 1 exactly
        out = gated(image, classes)
    assert torch.equal(out.logits, expected.logits) and torch.equal(out.terms["cyc"], expected.terms["cyc"])
    assert (half_open - expected.logits).abs().max() > 1e-3  # gates at their init change the outputs


@pytest.mark.parametrize("depth", [0, 1])
@pytest.mark.parametrize("gate", ["length", "depth"])
def test_a_closed_gate_removes_its_tokens_from_both_encoders(tiny_backbone, depth, gate):
    method = make(tiny_backbone, "adaptive-bimaple", bimaple_init="random")  # non-zero coupling biases
    image = inputs_for(method, tiny_backbone, batch=2, seed=3)
    classes = method.encode_classes(CLASSES)
    token = 1
    with torch.no_grad():
        if gate == "length":
            method.length_gates[depth].logits[token] = float("-inf")  # σ = 0 exactly
        else:
            method.depth_gate.logits[depth] = float("-inf")
        text, vision, _ = method.encoder_prompts()
        assert not text[depth][token].any() and not vision[depth][token].any()  # translations and biases gated too
        base = both_encoders(method, image, classes)
        step = 1e-2
        g = torch.Generator().manual_seed(1)
        for param in (method.prompts[depth], method.vision_prompts[depth]):  # finite differences, both sides' params
            delta = torch.randn(param.shape[1], generator=g)
            param[token] += step * delta
            moved = both_encoders(method, image, classes)
            for before, after in zip(base, moved, strict=True):
                assert torch.equal(before, after), "a closed token still reaches an encoder"
            param[token] -= step * delta
        other = 1 - token  # control: the same perturbation of an open token changes both encoders
        if gate == "length":
            method.prompts[depth][other] += step * torch.randn(method.prompts[depth].shape[1], generator=g)
            method.vision_prompts[depth][other] += step * torch.randn(
                method.vision_prompts[depth].shape[1], generator=g
            )
            moved = both_encoders(method, image, classes)
            assert all(((after - before).abs().max() / step) > 1e-4 for before, after in zip(base, moved, strict=True))


def test_param_matched_starts_exactly_where_the_gated_model_starts(tiny_backbone):
    gated = make(tiny_backbone, "adaptive-bimaple", gate_init="uniform")
    matched = make(tiny_backbone, "adaptive-bimaple", gate_init="uniform", variant="param-matched")
    assert matched.n_trainable() == gated.n_trainable()
    assert not any(isinstance(m, type(gated.depth_gate)) for m in matched.modules())  # no Gate left
    image = inputs_for(gated, tiny_backbone, batch=2, seed=3)
    classes = gated.encode_classes(CLASSES)
    with torch.no_grad():
        a, b = gated(image, classes), matched(image, classes)
    assert torch.equal(a.logits, b.logits)
    assert set(a.terms) == set(b.terms) == {"cyc", "sparse", "smooth"}
    assert all(torch.equal(a.terms[k], b.terms[k]) for k in a.terms)
    assert float(matched.depth_gate().mean()) == pytest.approx(float(torch.sigmoid(gated.depth_gate.logits).mean()))


@pytest.mark.parametrize("name", ["coop-gating", "cocoop-gating"])
def test_param_matched_scales_start_at_the_gate_values(tiny_backbone, name):
    gated = make(tiny_backbone, name, gate_init="biased:1.5")
    matched = make(tiny_backbone, name, gate_init="biased:1.5", variant="param-matched")
    assert matched.n_trainable() == gated.n_trainable()
    features = torch.nn.functional.normalize(inputs_for(gated, tiny_backbone, batch=5, seed=2), dim=-1)
    with torch.no_grad():
        want, got = (
            (gated.gate(features), matched.gate(features))
            if name == "cocoop-gating"
            else (gated.gate(), matched.gate())
        )
    if name == "coop-gating":
        assert torch.equal(want, got)
    else:  # the instance gate's first-order expansion: off by O((W0·x)²), small against the spread across inputs
        spread = want.max(0).values - want.min(0).values
        assert float(spread.min()) > 1e-3
        assert float(((got - want).abs().max(0).values / spread).max()) < 0.1


def test_always_frozen_gates_stay_at_init_while_the_rest_trains(tiny_backbone):
    from recorders.train.loop import make_optimizer

    method = make(tiny_backbone, "adaptive-bimaple", variant="always-frozen", gate_init="uniform", lr=0.05)
    start = [g.logits.detach().clone() for g in [*method.length_gates, method.depth_gate]]
    prompts = method.prompts[1].detach().clone()
    optimizer = make_optimizer(
        method, run_config("adaptive-bimaple", variant="always-frozen", gate_init="uniform", lr=0.05)
    )
    out = method(inputs_for(method, tiny_backbone), method.encode_classes(CLASSES))
    (torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + sum(out.terms.values())).backward()
    optimizer.step()
    assert all(torch.equal(a, g.logits) for a, g in zip(start, [*method.length_gates, method.depth_gate], strict=True))
    assert not torch.equal(prompts, method.prompts[1])
