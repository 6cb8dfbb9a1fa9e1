"""The prompt-learning text and vision paths against transformers' own get_text_features/get_image_features."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from recorders.clip.backbone import Backbone, load_backbone
from recorders.clip.encoders import (
    eot_positions,
    image_features,
    shared_prefix_text_features,
    text_features,
    token_embeddings,
)
from recorders.clip.pretrain import random_checkpoint
from recorders.data.world import CLASSES

TOL = 1e-5


@pytest.fixture(scope="module")
def random_backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    """A random-init tiny CLIP with the world tokenizer, saved and loaded like any checkpoint."""
    return load_backbone(str(random_checkpoint(tmp_path_factory.mktemp("random-clip"))), device="cpu")


def _random_model(eos_token_id: int, seed: int = 0) -> CLIPModel:
    """A tiny random-init CLIP with unequal text/vision widths; ``eos_token_id`` 2 selects the legacy pooling."""
    config = CLIPConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=16,
            eos_token_id=eos_token_id,
            bos_token_id=62,
            pad_token_id=eos_token_id,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=24,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def _ids(lengths: list[int], eot: int, context: int = 16) -> torch.Tensor:
    """BOS, random tokens, EOT, then EOT padding, as a CLIP tokenizer pads."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 60, (len(lengths), context), generator=generator)
    ids[:, 0] = 62
    for row, length in enumerate(lengths):
        ids[row, length:] = eot
    return ids


@pytest.mark.parametrize("eos", [63, 2], ids=["eos-id", "legacy-argmax"])
def test_text_path_equals_get_text_features(eos: int) -> None:
    model = _random_model(eos_token_id=eos)
    eot = 63  # the largest id: legacy pooling takes the argmax
    ids = _ids([3, 5, 9, 16 - 1], eot)
    expected = model.get_text_features(input_ids=ids).pooler_output
    got = text_features(model, token_embeddings(model, ids), ids)
    assert got.shape == (4, 24)
    assert torch.max(torch.abs(got - expected)) <= TOL


def test_text_path_is_causal_like_clip() -> None:
    """Changing a token after EOT must not change the features (the causal mask is in force); one before must."""
    model = _random_model(eos_token_id=63)
    ids = _ids([5], 63)
    embeds = token_embeddings(model, ids)
    noise = torch.randn(32, generator=torch.Generator().manual_seed(7))  # not constant: LayerNorm removes those
    changed = embeds.clone()
    changed[:, 10] += noise
    assert torch.equal(text_features(model, embeds, ids), text_features(model, changed, ids))
    changed[:, 2] += noise
    assert not torch.allclose(text_features(model, embeds, ids), text_features(model, changed, ids), atol=1e-4)


def test_vision_path_equals_get_image_features() -> None:
    model = _random_model(eos_token_id=63)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = model.get_image_features(pixel_values=pixel_values).pooler_output
    got = image_features(model, pixel_values)
    assert got.shape == (3, 24)
    assert torch.max(torch.abs(got - expected)) <= TOL


def test_deep_text_prompts_act_at_their_layer() -> None:
    """A prompt for layer i+1 replaces the hidden states there: it must equal running layers by hand."""
    model = _random_model(eos_token_id=63)
    ids = _ids([8, 8], 63)
    embeds = token_embeddings(model, ids)
    prompt = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    base = text_features(model, embeds, ids)
    # None entries leave the output unchanged; a prompt for layer 2 changes it.
    assert torch.allclose(text_features(model, embeds, ids, deep_prompts=[None, None]), base, atol=TOL)
    got = text_features(model, embeds, ids, deep_prompts=[None, prompt], prompt_start=1)
    assert not torch.allclose(got, base, atol=1e-3)
    # Independent computation: transformers' encoder with a forward pre-hook that overwrites positions 1..2.
    layer = model.text_model.encoder.layers[2]

    def replace(_module, args, kwargs):
        hidden = args[0].clone()
        hidden[:, 1:3] = prompt
        return (hidden, *args[1:]), kwargs

    handle = layer.register_forward_pre_hook(replace, with_kwargs=True)
    try:
        expected = model.get_text_features(input_ids=ids).pooler_output
    finally:
        handle.remove()
    assert torch.max(torch.abs(got - expected)) <= TOL


def test_vision_prompts_append_then_replace() -> None:
    model = _random_model(eos_token_id=63)
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    shallow = torch.randn(2, 48, generator=torch.Generator().manual_seed(5), requires_grad=True)
    deep = torch.randn(2, 2, 48, generator=torch.Generator().manual_seed(6), requires_grad=True)
    base = image_features(model, pixel_values)
    with_shallow = image_features(model, pixel_values, vision_prompts=[shallow])
    assert not torch.allclose(with_shallow, base, atol=1e-3)
    got = image_features(model, pixel_values, vision_prompts=[shallow, None, deep])
    # Independent computation: append before pre_layrnorm, overwrite the last two tokens before layer 2.
    vision = model.vision_model
    hidden = torch.cat([vision.embeddings(pixel_values), shallow.expand(2, -1, -1)], dim=1)
    hidden = vision.pre_layrnorm(hidden)
    for index, layer in enumerate(vision.encoder.layers):
        if index == 2:
            hidden = torch.cat([hidden[:, :-2], deep], dim=1)
        hidden = layer(hidden, None)
    expected = model.visual_projection(vision.post_layernorm(hidden[:, 0]))
    assert torch.max(torch.abs(got - expected)) <= TOL
    # Gradients reach the prompts (the model itself stays frozen in use, but the path is differentiable).
    got.sum().backward()
    assert shallow.grad is not None and deep.grad is not None and deep.grad.abs().sum() > 0


def test_prompt_shapes_are_checked() -> None:
    model = _random_model(eos_token_id=63)
    ids = _ids([4], 63)
    with pytest.raises(ValueError, match="at most 2"):
        text_features(model, token_embeddings(model, ids), ids, deep_prompts=[None] * 3)
    with pytest.raises(ValueError, match="need vision_prompts"):
        image_features(model, torch.zeros(1, 3, 32, 32), vision_prompts=[None, torch.zeros(2, 48)])


def test_world_tokenizer_text_path(random_backbone: Backbone) -> None:
    """With the world tokenizer, "a photo of a {class}." through the prompt path equals get_text_features."""
    ids = random_backbone.tokenize([f"a photo of a {name}." for name in CLASSES])
    assert ids.shape == (len(CLASSES), random_backbone.context_length)
    eot = random_backbone.tokenizer.eos_token_id
    assert eot == int(ids.max())
    assert torch.equal(
        ids[torch.arange(len(ids)), eot_positions(random_backbone.model, ids)], torch.full((len(ids),), eot)
    )
    model = random_backbone.model
    expected = model.get_text_features(input_ids=ids).pooler_output
    got = text_features(model, token_embeddings(model, ids), ids)
    assert torch.max(torch.abs(got - expected)) <= TOL


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("per_image", [False, True], ids=["shared-prefix", "prefix-per-image"])
def test_shared_prefix_path_equals_the_full_text_path(n_layers: int, per_image: bool) -> None:
    """G prefixes × C classes, with deep prompts (shared and per image), against text_features on the G·C
    concatenated sequences; classes of different lengths pool at different positions."""
    model = _random_model(eos_token_id=63)
    model.text_model.encoder.layers = model.text_model.encoder.layers[:n_layers]
    g = torch.Generator().manual_seed(5)
    groups, n_ctx = 3, 4
    ids = _ids([8, 11, 7, 9], 63, context=12)  # 4 classes; the suffix starts after BOS + 4 context tokens
    n_prefix = 1 + n_ctx
    embeds = token_embeddings(model, ids)
    ctx = torch.randn(groups if per_image else 1, n_ctx, 32, generator=g)
    prefix = torch.cat([embeds[:1, :1].expand(len(ctx), -1, -1), ctx], 1)
    deep = [torch.randn(*((groups,) if per_image else ()), n_ctx, 32, generator=g) for _ in range(n_layers - 1)]
    full = torch.cat(
        [prefix[:, None].expand(groups, 4, -1, -1), embeds[None, :, n_prefix:].expand(groups, -1, -1, -1)], 2
    ).flatten(0, 1)
    per_sequence = [d.repeat_interleave(4, 0) if d.dim() == 3 else d for d in deep]  # group-major, like `full`
    want = text_features(model, full, ids.repeat(groups, 1), deep_prompts=per_sequence).view(groups, 4, -1)
    eot = eot_positions(model, ids) - n_prefix
    got = shared_prefix_text_features(model, prefix, embeds[:, n_prefix:], eot, deep_prompts=deep)
    assert got.shape == (groups if per_image else 1, 4, 24)  # one prefix: one set of class features
    assert torch.max(torch.abs(got - want)) <= TOL


def test_shared_prefix_path_refuses_prompts_past_the_prefix() -> None:
    model = _random_model(eos_token_id=63)
    ids = _ids([8], 63, context=12)
    embeds = token_embeddings(model, ids)
    with pytest.raises(ValueError, match="past the shared prefix"):
        shared_prefix_text_features(
            model, embeds[:, :3], embeds[:, 3:], torch.tensor([4]), deep_prompts=[torch.zeros(4, 32)]
        )
