"""Batched training augmentation (`medcad.data.transforms.BatchAugmentation`): each image its own draw, the mask
following its image, and torchvision's ranges kept."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medcad.data.transforms import BatchAugmentation, augmentation
from medcad.errors import ConfigError

shapes = st.tuples(st.integers(1, 4), st.sampled_from([1, 3]), st.integers(4, 40), st.integers(4, 40))


def _batch(b: int, c: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    m = torch.randint(0, 3, (b, 1, h, w), generator=g).float()  # class indices, as label maps have
    return x, m


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_no_draw_gives_the_images_and_masks_back(shape) -> None:
    x, m = _batch(*shape)
    out, mo = BatchAugmentation()(x, m)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x.float(), atol=1e-3, rtol=0)
    assert torch.equal(mo, m)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_flips_are_exact_and_the_mask_follows(shape) -> None:
    x, m = _batch(*shape)
    out, mo = BatchAugmentation(hflip=1.0, vflip=1.0)(x, m)
    torch.testing.assert_close(out, x.float().flip(-1, -2), atol=1e-3, rtol=0)
    assert torch.equal(mo, m.flip(-1, -2))


@settings(max_examples=40, deadline=None)
@given(
    shapes,
    st.floats(0.05, 1.0),
    st.floats(0.0, 0.95),
    st.floats(0.5, 1.0),
    st.floats(1.0, 2.0),
    st.floats(0, 45),
    st.integers(0, 2**16),
)
def test_draws_stay_in_their_ranges(shape, lo, span, rlo, rhi, degrees, seed) -> None:
    b, c, h, w = shape
    scale = (lo, min(1.0, lo + span))
    aug = BatchAugmentation(scale=scale, ratio=(rlo, rhi), hflip=0.5, degrees=degrees, brightness=0.2, contrast=0.2)
    torch.manual_seed(seed)
    theta = aug.geometry(b, h, w)
    sx = torch.hypot(theta[:, 0, 0], theta[:, 0, 1] * w / h)  # the crop's half-extents (a rotation and flips keep
    sy = torch.hypot(theta[:, 1, 0] * h / w, theta[:, 1, 1])  # lengths in pixel units)
    cx, cy = theta[:, 0, 2], theta[:, 1, 2]
    eps = 1e-5
    assert ((cx - sx >= -1 - eps) & (cx + sx <= 1 + eps) & (cy - sy >= -1 - eps) & (cy + sy <= 1 + eps)).all()
    area = sx * sy  # the crop's fraction of the image, whole pixels: within the range but for rounding ...
    whole = torch.isclose(area, torch.ones_like(area), atol=1e-5)  # ... or the whole image (no draw fitted)
    slack = (w + h + 1) / (h * w)
    assert (whole | ((area >= scale[0] - slack) & (area <= scale[1] + slack))).all()
    x, m = _batch(*shape, seed=seed)
    torch.manual_seed(seed)
    out, mo = aug(x, m)
    assert out.min() >= 0 and out.max() <= 255
    assert set(mo.unique().tolist()) <= set(m.unique().tolist()) | {0.0}  # nearest: no value a mask did not have
    torch.manual_seed(seed)
    again, _ = aug(x, m)
    assert torch.equal(out, again)  # the draws come from torch's seeded generator


def test_each_image_gets_its_own_draw_and_a_rotation_turns_it() -> None:
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 6:] = 200  # a bar from the centre to the right edge
    torch.manual_seed(0)
    out = BatchAugmentation(degrees=90)(x)
    angles = set()
    for img in out[:, 0]:
        ys, xs = torch.nonzero(img > 100, as_tuple=True)
        angles.add(round(math.degrees(math.atan2(float(ys.float().mean() - 4), float(xs.float().mean() - 4)))))
    assert len(angles) > 20 and max(angles) - min(angles) > 120  # spread over +-90 degrees, one per image
    bright = BatchAugmentation(brightness=0.1)(torch.full((256, 3, 4, 4), 100, dtype=torch.uint8))
    levels = bright[:, 0, 0, 0]
    assert levels.min() >= 90 - 1e-3 and levels.max() <= 110 + 1e-3 and levels.std() > 3
    assert torch.equal(bright, bright[:, :1, :1, :1].expand_as(bright))  # one factor per image


def test_presets() -> None:
    assert augmentation("none") is None
    light = augmentation("light")
    assert light.scale == (0.85, 1.0) and light.degrees == 10 and light.vflip == 0
    assert augmentation("kvasir").vflip == 0.5
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        augmentation("heavy")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**16))
def test_the_sampling_grid_is_torchs(b: int, h: int, w: int, seed: int) -> None:
    import torch.nn.functional as F

    from medcad.data.transforms import _affine_grid

    theta = torch.randn(b, 2, 3, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(_affine_grid(theta, h, w), F.affine_grid(theta, [b, 1, h, w], align_corners=False))


def _crop_box(theta: torch.Tensor, h: int, w: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) in pixels of an unrotated, unflipped draw's crop."""
    cw, ch = float(theta[0, 0]) * w, float(theta[1, 1]) * h
    return (
        round(((float(theta[0, 2]) + 1) * w - cw) / 2),
        round(((float(theta[1, 2]) + 1) * h - ch) / 2),
        round(cw),
        round(ch),
    )


def test_a_crop_reaches_every_position_where_it_fits() -> None:
    aug = BatchAugmentation(scale=(0.25, 0.25), ratio=(1.0, 1.0))  # a 4 x 4 crop of an 8 x 8 image
    torch.manual_seed(0)
    theta = aug.geometry(500, 8, 8)
    boxes = {_crop_box(t, 8, 8) for t in theta}
    assert {(x, y) for x, y, _, _ in boxes} == {(x, y) for x in range(5) for y in range(5)}
    assert {(cw, ch) for _, _, cw, ch in boxes} == {(4, 4)}


@settings(max_examples=20, deadline=None)
@given(st.integers(6, 40), st.integers(6, 40), st.integers(0, 2**16))
def test_an_unrotated_crop_is_torchvisions_resized_crop(h: int, w: int, seed: int) -> None:
    from torchvision.transforms.v2 import functional as TF

    aug = BatchAugmentation(scale=(0.3, 1.0), ratio=(0.7, 1.4))
    x = torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(seed)).float()
    torch.manual_seed(seed)
    left, top, cw, ch = _crop_box(aug.geometry(1, h, w)[0], h, w)
    torch.manual_seed(seed)
    ours = aug(x)
    theirs = TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=False)  # bilinear
    # output pixels that sample beyond the crop's outermost pixel centres differ by design: torchvision cuts the crop
    # out first and repeats its edge pixel, one resampling of the whole image reads the pixel beyond (if any)

    def inside(n: int, c: int) -> torch.Tensor:
        at = (torch.arange(n) + 0.5) * c / n - 0.5  # where each output pixel samples, in crop pixels
        return (at >= 0) & (at <= c - 1)

    rows, cols = inside(h, ch), inside(w, cw)
    torch.testing.assert_close(ours[..., rows, :][..., cols], theirs[..., rows, :][..., cols], atol=2e-3, rtol=0)


def test_under_a_bfloat16_default_dtype_the_draws_stay_float32() -> None:
    """Lightning's bf16-true precision makes bfloat16 the default dtype while it trains."""
    x, m = _batch(4, 3, 32, 32)
    aug = augmentation("kvasir")
    torch.manual_seed(0)
    want = aug(x, m)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        got = aug(x, m)
    finally:
        torch.set_default_dtype(before)
    torch.testing.assert_close(got, want)


def test_a_crop_at_the_image_edge_repeats_the_edge_pixel_and_rotated_corners_are_black() -> None:
    flat = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    torch.testing.assert_close(BatchAugmentation(scale=(0.5, 0.5), ratio=(1.0, 1.0))(flat), flat.float())
    turned = BatchAugmentation(degrees=45)(flat)
    assert turned[..., 0, 0].min() == 0 and (turned[..., 8, 8] - 200).abs().max() < 1e-3  # black corners, centre kept
