"""MaPLe pinned, BiMaPLe and AdaptiveBiMaPLe as the paper defines them, and the variants that isolate adaptivity.

Every check runs on the random-init tiny CLIP (widths from its config) or, for parameter counts, on a ViT-B/16-shaped
``CLIPModel`` built on the meta device (no weights, no download).
"""

from __future__ import annotations

import pytest
import torch
from test_methods import CLASSES, inputs_for, make, random_backbone

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
