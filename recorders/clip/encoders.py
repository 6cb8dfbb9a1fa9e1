"""CLIP's text and vision forward passes, opened up for prompt learning.

transformers' ``CLIPTextModel.forward`` takes token ids only, so a prompt learner cannot feed learned context
vectors through it. These functions run the same modules in the same order, with the same masks, and let a caller

- splice learned vectors into the token embeddings (CoOp/CoCoOp: :func:`token_embeddings` then edit, then
  :func:`text_features`),
- replace prompt positions at the input of deeper text layers (MaPLe ``deep_prompts``),
- append prompt tokens to the vision sequence and replace them at deeper layers (MaPLe ``vision_prompts``).

With no prompts they reproduce ``CLIPModel.get_text_features`` / ``get_image_features`` exactly (same modules,
same causal mask construction, same EOT pooling rule).

Where vision prompts enter: after ``embeddings`` (CLS + patches + positions) and BEFORE ``pre_layrnorm``, as the
MaPLe/VPT reference code does (``x = cat([x, ctx]); x = ln_pre(x)``); the appended tokens get no position
embedding. Deeper prompts replace the residual-stream tokens at a layer's input, with no normalisation, as in the
reference. Text deep prompts likewise replace hidden states (positions were added only at the input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import CLIPModel
from transformers.masking_utils import create_causal_mask
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer


def token_embeddings(model: CLIPModel, input_ids: Tensor) -> Tensor:
    """Token-table embeddings ``(N, L, text_width)`` of ``input_ids`` ``(N, L)``, WITHOUT position embeddings."""
    return model.text_model.embeddings.token_embedding(input_ids)


def eot_positions(model: CLIPModel, input_ids: Tensor) -> Tensor:
    """Index ``(N,)`` of the token each sequence is pooled at, by transformers' own rule: the largest id when the
    config's ``eos_token_id`` is the legacy 2 (original OpenAI checkpoints), else the first ``eos_token_id``."""
    eos = model.text_model.eos_token_id
    ids = input_ids.to(torch.int)
    if eos == 2:
        return ids.argmax(dim=-1)
    return (ids == eos).int().argmax(dim=-1)


def _batched(prompts: Tensor, like: Tensor) -> Tensor:
    """``prompts`` (n, D) or (N, n, D) as (N, n, D) in ``like``'s dtype, ``like`` being (N, L, D)."""
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(like.shape[0], -1, -1)
    return prompts.to(like.dtype)


def _splice(hidden: Tensor, prompts: Tensor, start: int) -> Tensor:
    """``hidden`` (N, L, D) with positions ``[start, start + n)`` replaced by ``prompts`` (n, D) or (N, n, D)."""
    prompts = _batched(prompts, hidden)
    n = prompts.shape[1]
    if start < 0 or start + n > hidden.shape[1]:
        raise ValueError(f"prompts of length {n} at position {start} do not fit a sequence of {hidden.shape[1]}")
    return torch.cat([hidden[:, :start], prompts, hidden[:, start + n :]], dim=1)


def _deep_text_prompts(deep_prompts: Sequence[Tensor | None] | None, n_layers: int) -> list[Tensor | None]:
    """``deep_prompts`` as a list, checked to fit a text encoder of ``n_layers`` layers (at most one per layer
    after the first)."""
    deep = list(deep_prompts or [])
    if len(deep) > n_layers - 1:
        raise ValueError(f"{len(deep)} deep text prompts for {n_layers} layers: at most {n_layers - 1}")
    return deep


def text_features(
    model: CLIPModel,
    token_embeds: Tensor,
    input_ids: Tensor,
    *,
    deep_prompts: Sequence[Tensor | None] | None = None,
    prompt_start: int = 1,
) -> Tensor:
    """Projected text features ``(N, embed_dim)``, not normalised.

    ``token_embeds`` ``(N, L, text_width)``: token-table embeddings (see :func:`token_embeddings`), possibly with
    learned context spliced in; position embeddings are added here. ``input_ids`` ``(N, L)`` only locate the EOT
    token to pool at. ``deep_prompts[i]`` (``(n, text_width)`` or ``(N, n, text_width)``, or None to leave the layer
    alone) replaces hidden positions ``[prompt_start, prompt_start + n)`` at the input of encoder layer ``i + 1``;
    at most ``num_hidden_layers - 1`` entries.
    """
    text = model.text_model
    layers = text.encoder.layers
    deep = _deep_text_prompts(deep_prompts, len(layers))
    hidden = text.embeddings(inputs_embeds=token_embeds)
    mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    for index, layer in enumerate(layers):
        prompt = deep[index - 1] if 0 < index <= len(deep) else None
        if prompt is not None:
            hidden = _splice(hidden, prompt, prompt_start)
        hidden = layer(hidden, mask, is_causal=True)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = text.final_layer_norm(hidden[rows, eot_positions(model, input_ids).to(hidden.device)])
    return model.text_projection(pooled)


def shared_prefix_text_features(
    model: CLIPModel,
    prefix: Tensor,
    suffix: Tensor,
    eot: Tensor,
    *,
    deep_prompts: Sequence[Tensor | None] | None = None,
    prompt_start: int = 1,
) -> Tensor:
    """Projected text features ``(G, C, embed_dim)`` of the ``G × C`` sequences ``[prefix_g ; suffix_c]``, not
    normalised: the same numbers :func:`text_features` gives for them, at a fraction of the work.

    ``prefix`` ``(G, P, text_width)``: token-table embeddings shared by every class (start token and learned
    context; ``G`` is 1 or one prefix per image). ``suffix`` ``(C, S, text_width)``: each class's embeddings after
    the prefix. ``eot`` ``(C,)``: the index within the suffix of the token each class is pooled at (contract:
    ``0 <= eot < S``). ``deep_prompts`` as in :func:`text_features` (``(n, D)`` or ``(G, n, D)``); they must lie
    inside the prefix.

    Attention is causal, so the prefix's hidden states never depend on the class: they are computed once per
    prefix, not once per class, and every class attends to them. The first layer normalises and projects the
    suffix once per class, not once per prefix. In the last layer only the pooled token's query, attention and MLP
    are computed (the other positions feed nothing).
    """
    text = model.text_model
    layers = text.encoder.layers
    deep = _deep_text_prompts(deep_prompts, len(layers))
    n_prefix, n_suffix = prefix.shape[1], suffix.shape[1]
    positions = text.embeddings.position_embedding.weight
    if n_prefix + n_suffix > positions.shape[0]:
        raise ValueError(f"sequences of {n_prefix + n_suffix} tokens; the model has {positions.shape[0]} positions")
    for prompts in deep:
        if prompts is not None and prompt_start + prompts.shape[-2] > n_prefix:
            raise ValueError(
                f"deep prompts at [{prompt_start}, {prompt_start + prompts.shape[-2]}) reach past "
                f"the shared prefix of {n_prefix} tokens"
            )
    groups = max([prefix.shape[0], *(p.shape[0] for p in deep if p is not None and p.dim() == 3)])
    hidden_prefix = (prefix + positions[:n_prefix].to(prefix.dtype)).expand(groups, -1, -1)
    hidden_suffix = (suffix + positions[n_prefix : n_prefix + n_suffix].to(suffix.dtype))[None]  # (1, C, S, D)
    allowed = torch.ones(n_suffix, n_suffix, dtype=torch.bool, device=suffix.device).tril()
    for index, layer in enumerate(layers):
        prompt = deep[index - 1] if 0 < index <= len(deep) else None
        if prompt is not None:
            hidden_prefix = _splice(hidden_prefix, prompt, prompt_start)
        pooled = eot if index == len(layers) - 1 else None
        hidden_prefix, hidden_suffix = _shared_prefix_layer(layer, hidden_prefix, hidden_suffix, allowed, pooled)
    return model.text_projection(text.final_layer_norm(hidden_suffix))


def _shared_prefix_layer(
    layer: CLIPEncoderLayer, prefix: Tensor, suffix: Tensor, allowed: Tensor, eot: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One ``CLIPEncoderLayer`` (pre-LN attention and MLP, both residual) on prefix hidden states ``(G, P, D)``
    and suffix hidden states ``(G or 1, C, S, D)`` (1: the same for every prefix, as at the input); the suffix
    attends to the whole prefix and causally to itself (``allowed`` ``(S, S)``) and comes back as ``(G, C, S, D)``.
    With ``eot`` ``(C,)`` (the last layer) only the pooled tokens are computed and the suffix comes back as
    ``(G, C, D)``; the prefix is then returned unchanged.

    Attention runs in the layout ``(G, H, C, Q, ·)``: the prefix keys are shared by the ``C·Q`` queries of a group
    (one matmul per group and head, no broadcast copies), the suffix keys by the ``Q`` queries of a class.
    """
    attn: CLIPAttention = layer.self_attn  # type: ignore[assignment]  # nn.Module attribute typing
    heads, head_dim, scale = attn.num_heads, attn.head_dim, attn.scale
    n_classes = suffix.shape[1]

    def heads_first(x: Tensor) -> Tensor:  # (G, [C,] L, D) -> (G, H, [C,] L, head_dim)
        x = x.unflatten(-1, (heads, head_dim))
        return x.permute(0, 3, 1, 2, 4) if x.dim() == 5 else x.permute(0, 2, 1, 3)

    x_prefix, x_suffix = layer.layer_norm1(prefix), layer.layer_norm1(suffix)
    k_prefix, v_prefix = heads_first(attn.k_proj(x_prefix)), heads_first(attn.v_proj(x_prefix))  # (G, H, P, hd)
    k_suffix, v_suffix = heads_first(attn.k_proj(x_suffix)), heads_first(attn.v_proj(x_suffix))  # (G, H, C, S, hd)
    if eot is None:
        residual, queries, mask = suffix, x_suffix, allowed
    else:
        classes = torch.arange(n_classes, device=eot.device)
        residual, queries = suffix[:, classes, eot], x_suffix[:, classes, eot, None]  # (G, C, D), (G, C, 1, D)
        mask = allowed[eot][:, None]  # (C, 1, S)
    q = heads_first(attn.q_proj(queries)) * scale  # (G, H, C, Q, hd)
    n_queries = q.shape[3]
    to_prefix = (q.flatten(2, 3) @ k_prefix.transpose(-1, -2)).unflatten(2, (n_classes, n_queries))
    to_suffix = (q @ k_suffix.transpose(-1, -2)).masked_fill(~mask, float("-inf"))  # (G or 1, H, C, Q, S)
    to_suffix = to_suffix.expand(*to_prefix.shape[:-1], to_suffix.shape[-1])
    weights = torch.softmax(torch.cat([to_prefix, to_suffix], -1), dim=-1, dtype=torch.float32).to(q.dtype)
    n_prefix = prefix.shape[1]
    from_prefix = (weights[..., :n_prefix].flatten(2, 3) @ v_prefix).unflatten(2, (n_classes, n_queries))
    attended = from_prefix + weights[..., n_prefix:] @ v_suffix  # (G, H, C, Q, hd)
    attended = attn.out_proj(attended.permute(0, 2, 3, 1, 4).flatten(-2))  # (G, C, Q, D)
    if eot is None:
        suffix = suffix + attended
        own = torch.nn.functional.scaled_dot_product_attention(
            heads_first(attn.q_proj(x_prefix)), k_prefix, v_prefix, is_causal=True, scale=scale
        )
        prefix = prefix + attn.out_proj(own.transpose(1, 2).flatten(-2))
        prefix = prefix + layer.mlp(layer.layer_norm2(prefix))
    else:
        suffix = residual + attended[:, :, 0]
    return prefix, suffix + layer.mlp(layer.layer_norm2(suffix))


def image_features(
    model: CLIPModel,
    pixel_values: Tensor,
    *,
    vision_prompts: Sequence[Tensor | None] | None = None,
) -> Tensor:
    """Projected image features ``(B, embed_dim)``, not normalised, from ``pixel_values`` ``(B, 3, S, S)``
    normalised with the backbone's mean/std at its ``image_size``.

    ``vision_prompts[0]`` (``(n, vision_width)`` or ``(B, n, vision_width)``) is appended after the patch tokens
    before ``pre_layrnorm``; ``vision_prompts[i]`` for ``i >= 1`` (same shapes, or None to leave the layer alone)
    replaces those ``n`` appended tokens at the input of encoder layer ``i``. Pooling uses the CLS token.
    """
    vision = model.vision_model
    layers = vision.encoder.layers
    prompts = list(vision_prompts or [])
    if len(prompts) > len(layers):
        raise ValueError(f"{len(prompts)} vision prompts for {len(layers)} layers: at most {len(layers)}")
    if prompts and prompts[0] is None and any(p is not None for p in prompts[1:]):
        raise ValueError("deeper vision prompts need vision_prompts[0]: it appends the tokens they replace")
    hidden = vision.embeddings(pixel_values)
    n_prompt = 0
    first = prompts[0] if prompts else None
    if first is not None:
        n_prompt = first.shape[-2]
        hidden = torch.cat([hidden, _batched(first, hidden)], dim=1)
    hidden = vision.pre_layrnorm(hidden)
    for index, layer in enumerate(layers):
        prompt = prompts[index] if 0 < index < len(prompts) else None
        if prompt is not None:
            if prompt.shape[-2] != n_prompt:
                raise ValueError(
                    f"vision_prompts[{index}] has {prompt.shape[-2]} tokens; vision_prompts[0] appended {n_prompt}"
                )
            hidden = _splice(hidden, prompt, hidden.shape[1] - n_prompt)
        hidden = layer(hidden, None)
    return model.visual_projection(vision.post_layernorm(hidden[:, 0]))
