"""CLIP guidance without weights: backgrounds, augmentations, the cosine loss and the oracle embedder."""

from __future__ import annotations

import pytest
import torch

from backend.geometry.cameras import sample_cameras
from backend.guidance.augment import BACKGROUNDS, ViewAugmentConfig, ViewAugmenter, random_backgrounds
from backend.guidance.clip import CLIPEmbedder, CLIPGuidance, cosine_loss
from backend.guidance.oracle import OracleCLIPEmbedder
from backend.params import ParamError


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_backgrounds_are_images_in_range_and_seeded(kind):
    a = random_backgrounds(kind, 6, 20, 24, torch.Generator().manual_seed(1))
    b = random_backgrounds(kind, 6, 20, 24, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 20, 24) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)


def test_background_kinds_look_like_their_names():
    g = torch.Generator().manual_seed(0)
    solid = random_backgrounds("solid", 4, 16, 16, g)
    assert torch.equal(solid, solid[:, :, :1, :1].expand_as(solid))  # one colour per image
    assert not torch.equal(solid[0], solid[1])
    checker = random_backgrounds("checkerboard", 4, 32, 32, g)
    for image in checker:  # exactly two colours per image
        assert torch.unique(image.reshape(3, -1).T, dim=0).shape[0] == 2
    noise = random_backgrounds("noise", 2, 64, 64, g)
    assert 0.1 < float(noise.std()) < 0.4
    assert torch.equal(random_backgrounds("white", 1, 4, 4, g), torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="background"):
        random_backgrounds("plaid", 1, 4, 4, g)


def test_augmenter_draws_once_for_all_stacks_reproducibly_and_leaves_global_rng_alone():
    aug = ViewAugmenter(ViewAugmentConfig(num_augmentations=3, crop_scale=(0.5, 0.9)), 48)
    rgb = torch.rand(2, 3, 80, 80)
    alpha = (torch.rand(2, 1, 80, 80) > 0.5).float()
    state = torch.get_rng_state()
    x, y = aug([(rgb, alpha), (rgb.clone(), alpha.clone())], torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())
    assert x.shape == (6, 3, 48, 48) and torch.equal(x, y)
    (again,) = aug([(rgb, alpha)], torch.Generator().manual_seed(3))
    assert torch.equal(again, x)
    (other,) = aug([(rgb, alpha)], torch.Generator().manual_seed(4))
    assert not torch.equal(other, x)


def test_augmenter_is_differentiable_and_checks_shapes():
    aug = ViewAugmenter(ViewAugmentConfig(), 32)
    rgb = torch.rand(2, 3, 40, 40, requires_grad=True)
    alpha = torch.rand(2, 1, 40, 40, requires_grad=True)
    (out,) = aug([(rgb, alpha)], torch.Generator().manual_seed(0))
    out.sum().backward()
    assert rgb.grad.abs().sum() > 0 and alpha.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha"):
        aug([(rgb, alpha[:, :, :10])], torch.Generator())
    with pytest.raises(ValueError, match="at least one"):
        aug([], torch.Generator())
    with pytest.raises(ParamError, match="crop_scale"):
        ViewAugmentConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(ParamError, match="background"):
        ViewAugmentConfig(background="plaid")


def test_cosine_loss_values_and_shape_errors():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    loss, score = cosine_loss(e, torch.tensor([1.0, 0.0]))
    assert score == pytest.approx(0.5) and float(loss) == pytest.approx(-0.5)
    loss, score = cosine_loss(e, torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
    assert score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not match"):
        cosine_loss(e, torch.ones(3))
    with pytest.raises(ValueError, match="does not match"):
        cosine_loss(e, torch.ones(3, 2))


class _Reference:
    """A reference 'object': a fixed image pattern, the same from every camera."""

    def __init__(self, size: int):
        g = torch.Generator().manual_seed(7)
        coarse = torch.rand(1, 3, 4, 4, generator=g)  # blocks the oracle's 8x8 pooling sees whole
        self.rgb = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")

    def render(self, cameras):
        n = len(cameras)
        return self.rgb.expand(n, -1, -1, -1), torch.ones(n, 1, *self.rgb.shape[-2:])


def test_oracle_guidance_pulls_an_image_toward_the_reference():
    embedder = OracleCLIPEmbedder(image_size=32, pool_size=8, embed_dim=128)
    assert isinstance(embedder, CLIPEmbedder)
    with pytest.raises(ValueError, match="text tower"):
        embedder.encode_texts(["a chair"])
    reference = _Reference(48)
    guidance = CLIPGuidance(embedder, reference,
                            ViewAugmenter(ViewAugmentConfig(num_augmentations=2, perspective=0.0), 32))

    def coarse_error() -> float:  # what the oracle can see: the image at the pooled resolution
        pool = torch.nn.functional.adaptive_avg_pool2d
        return float((pool(torch.sigmoid(logits.detach()), 8) - pool(reference.rgb, 8)).abs().mean())

    logits = torch.zeros(1, 3, 48, 48, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    g = torch.Generator().manual_seed(0)
    cams = sample_cameras(2, g)
    error_before = coarse_error()
    scores = []
    for _ in range(60):
        out = guidance(torch.sigmoid(logits).expand(2, -1, -1, -1), torch.ones(2, 1, 48, 48), cams, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        scores.append(out.score)
    first, last = sum(scores[:10]) / 10, sum(scores[-10:]) / 10  # measured: 0.85 -> 0.998, error 0.225 -> 0.08
    assert last > first + 0.08 and last > 0.97
    assert coarse_error() < 0.5 * error_before


def test_fixed_target_must_match_the_embedding_width():
    embedder = OracleCLIPEmbedder(embed_dim=64)
    with pytest.raises(ValueError, match="target embedding"):
        CLIPGuidance(embedder, torch.ones(32), ViewAugmenter(ViewAugmentConfig(), 64))
    guidance = CLIPGuidance(embedder, torch.ones(64), ViewAugmenter(ViewAugmentConfig(), 64))
    out = guidance(torch.rand(2, 3, 64, 64), torch.ones(2, 1, 64, 64), sample_cameras(2, torch.Generator()),
                   torch.Generator().manual_seed(0))
    assert -1.0 <= out.score <= 1.0 and out.loss.dim() == 0
