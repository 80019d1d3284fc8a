"""Interp X: (N-1)·X+1 frames, originals kept exactly, and motion lands in between."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from motion_module.export import prepare_frames
from motion_module.interpolation import interpolate, pair_flow
from motion_module.params import ExportParams, Interp

SIZE, SQUARE, TOP = 128, 32, 40


def square_at(x0: int) -> Image.Image:
    """A textured square over a smooth background (flow needs some texture to lock onto)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    background = (40 + 60 * xx / SIZE + 40 * yy / SIZE).astype(np.uint8)  # at most 140
    image = np.repeat(background[..., None], 3, axis=2)
    texture = np.random.default_rng(0).integers(160, 240, (SQUARE // 4, SQUARE // 4, 3), dtype=np.uint8)
    image[TOP : TOP + SQUARE, x0 : x0 + SQUARE] = np.kron(texture, np.ones((4, 4, 1), np.uint8))
    return Image.fromarray(image)


def square_left_edge(image: Image.Image) -> float:
    bright = np.asarray(image)[..., 0] > 150  # only the square is brighter than the background
    xs = np.nonzero(bright)[1]
    return xs.mean() - (SQUARE - 1) / 2


def test_count_and_originals_unchanged():
    frames = [square_at(x) for x in (10, 20, 30)]
    out = interpolate(frames, 4)
    assert len(out) == (3 - 1) * 4 + 1
    for i, original in enumerate(frames):
        assert np.array_equal(np.asarray(out[i * 4]), np.asarray(original))
    assert out[0] is frames[0] and out[-1] is frames[-1]


def test_moving_square_lands_between_its_positions():
    out = interpolate([square_at(30), square_at(50)], 4)
    edges = [square_left_edge(f) for f in out]
    assert edges[0] == pytest.approx(30, abs=0.01) and edges[-1] == pytest.approx(50, abs=0.01)
    for k, expected in ((1, 35), (2, 40), (3, 45)):
        assert edges[k] == pytest.approx(expected, abs=1.5)
    middle = np.asarray(out[2])[..., 0] > 150
    assert middle.sum() == pytest.approx(SQUARE * SQUARE, rel=0.15)  # one square, not two ghosts


def test_x1_is_identity_and_bad_x_raises():
    frames = [square_at(10), square_at(12)]
    assert interpolate(frames, 1) == frames
    with pytest.raises(ValueError, match="Interp X must be at least 1"):
        interpolate(frames, 0)


def test_custom_interpolator_is_used_and_checked():
    frames = [square_at(10), square_at(12), square_at(14)]
    calls = []

    def repeat(fs, x):
        calls.append(x)
        return [f for f in fs[:-1] for _ in range(x)] + [fs[-1]]

    params = ExportParams(interp=Interp.FILM, interp_x=3)
    assert len(prepare_frames(frames, params, interpolator=repeat)) == 7 and calls == [3]
    with pytest.raises(RuntimeError, match="expected"):
        interpolate(frames, 3, lambda fs, x: list(fs))
    assert len(prepare_frames(frames, ExportParams(interp=Interp.OFF, interp_x=3))) == 3


def test_flow_estimated_at_reduced_size_is_scaled_back():
    a, b = np.asarray(square_at(30)), np.asarray(square_at(50))
    for max_side in (256, 64):  # full size, then analysed at half size
        flow = pair_flow(a, b, max_side=max_side)
        assert flow.shape == (SIZE, SIZE, 2)
        inside = flow[TOP + 4 : TOP + SQUARE - 4, 34 : 30 + SQUARE - 4]
        assert np.median(inside[..., 0]) == pytest.approx(20, abs=2)
        assert np.median(inside[..., 1]) == pytest.approx(0, abs=1)
