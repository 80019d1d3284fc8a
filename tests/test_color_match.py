"""Colour matching in LAB: a frame with a colour cast (and flattened contrast) comes back with
the reference's LAB statistics within 1 ΔE; off, or the reference frame itself, is untouched."""

from __future__ import annotations

import numpy as np
from PIL import Image

from motion_module.color_match import lab_stats, match_colors


def scene(seed=0, h=64, w=80):
    """A picture-like frame: lit gradient, a few soft blobs, fine texture; no clipped areas."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    image = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.6 - 0.3 * xx * yy], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        image = image * (1 - 0.5 * blob) + 0.5 * blob * rng.uniform(0.2, 0.8, 3)
    image += rng.normal(0, 0.02, image.shape)
    return Image.fromarray(np.clip(image * 255 + 0.5, 10, 245).astype(np.uint8))


def cast(image, shift=(28, -6, -22), contrast=0.8):
    x = np.asarray(image, np.float64)
    x = (x - x.mean()) * contrast + x.mean() + np.asarray(shift)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def delta_e_of_means(a, b) -> float:
    return float(np.linalg.norm(lab_stats(a)[0] - lab_stats(b)[0]))


def test_a_colour_cast_comes_back_within_one_delta_e():
    reference = scene(0)
    moved = cast(scene(1))
    assert delta_e_of_means(moved, reference) > 10  # the cast is real
    first, matched = match_colors([reference, moved])
    assert first is reference  # the reference frame is not re-encoded
    assert delta_e_of_means(matched, reference) < 1.0
    assert np.allclose(lab_stats(matched)[1], lab_stats(reference)[1], rtol=0.05)  # contrast restored
    assert matched.size == moved.size and matched.mode == "RGB"


def test_the_init_image_as_reference_matches_every_frame():
    init = scene(3, h=40, w=50)  # another size: only its statistics count
    frames = [cast(scene(s), shift=(s * 8, -s * 4, s * 3)) for s in range(3)]
    out = match_colors(frames, init)
    assert all(delta_e_of_means(f, init) < 1.0 for f in out)
    assert out[0] is not frames[0]


def test_off_returns_the_frames_untouched():
    frames = [scene(0), cast(scene(1))]
    out = match_colors(frames, enabled=False)
    assert out == frames and all(a is b for a, b in zip(out, frames, strict=True))
    assert match_colors([]) == []


def test_a_flat_frame_is_shifted_not_stretched():
    flat = Image.new("RGB", (16, 16), (90, 140, 60))
    out = match_colors([scene(0), flat])[1]
    assert delta_e_of_means(out, scene(0)) < 1.0
    assert (
        len(np.unique(np.asarray(out).reshape(-1, 3), axis=0)) == 1
    )  # one colour: no division by a zero std
