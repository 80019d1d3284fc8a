"""2D camera moves: a still schedule returns the init image untouched; a pan of 8 px per frame
puts frame k's marker 8·k px further; zoom and angle accumulate about the centre; keyframed
steps accumulate; border modes fill uncovered areas as named; bad values name their field."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from motion_module.camera_moves import camera_frames, camera_matrices, camera_schedule


def marked(width=96, height=48, x=10, y=20, size=4):
    """A black picture with a white size×size square whose top-left pixel is (x, y)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[y : y + size, x : x + size] = 255
    return Image.fromarray(pixels)


def centroid(image):
    """(x, y) of the white marker's centre of mass."""
    weight = np.asarray(image.convert("L"), np.float64)
    ys, xs = np.mgrid[: weight.shape[0], : weight.shape[1]]
    return (xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()


def textured(width=40, height=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("border", ["replicate", "reflect", "zero"])
def test_a_still_camera_leaves_every_frame_identical(border):
    init = textured()
    for out in (
        camera_frames(init, 6, border=border),
        camera_frames(
            init, 6, zoom="0:(1.0)", angle="0:(0)", translate_x="0:(0)", translate_y=0, border=border
        ),
        camera_frames(init, 6, zoom=1, angle="0:(0), 3:(0)", border=border),
    ):
        assert len(out) == 6
        assert all(np.array_equal(np.asarray(f), np.asarray(init)) for f in out)
        assert all(f is not init and f.size == init.size and f.mode == init.mode for f in out)


def test_translate_8px_per_frame_moves_frame_k_by_8k():
    init = marked()
    x0, y0 = centroid(init)
    out = camera_frames(init, 8, translate_x="0:(8)", border="zero")
    for k, frame in enumerate(out):
        assert centroid(frame) == pytest.approx((x0 + 8 * k, y0), abs=1e-9)
    out = camera_frames(init, 4, translate_y="0:(-3)", border="zero")  # up
    assert [round(centroid(f)[1], 6) for f in out] == [y0, y0 - 3, y0 - 6, y0 - 9]


def test_keyframed_steps_accumulate():
    init = marked()
    x0 = centroid(init)[0]
    out = camera_frames(init, 6, translate_x="0:(0), 4:(8)", border="zero")  # steps 2, 4, 6, 8, 8
    assert [centroid(f)[0] - x0 for f in out] == pytest.approx([0, 2, 6, 12, 20, 28], abs=1e-9)


def test_zoom_and_angle_accumulate_about_the_centre():
    init = marked(width=65, height=65, x=40, y=31, size=3)  # marker centre (41, 32): 9 px right of (32, 32)
    out = camera_frames(init, 3, zoom="0:(1.5)", border="zero")
    assert [centroid(f)[0] - 32 for f in out] == pytest.approx([9, 13.5, 20.25], abs=0.05)
    assert all(centroid(f)[1] == pytest.approx(32, abs=1e-6) for f in out)
    turned = camera_frames(init, 5, angle="0:(90)", border="zero")
    expected = [(41, 32), (32, 23), (23, 32), (32, 41), (41, 32)]  # counter-clockwise on screen
    for frame, (x, y) in zip(turned, expected, strict=True):
        assert centroid(frame) == pytest.approx((x, y), abs=1e-3)
    assert np.abs(np.asarray(turned[4], np.int16) - np.asarray(init, np.int16)).max() <= 1  # full turn


def test_one_warp_per_frame_not_a_chain_of_warps():
    schedule = camera_schedule(4, zoom="0:(1.1)", angle="0:(5)", translate_x=2)
    matrices = camera_matrices(schedule, 40, 30)
    assert np.array_equal(matrices[0], np.eye(3)[:2])
    step = np.vstack([matrices[1], [0, 0, 1]])
    assert np.allclose(np.vstack([matrices[3], [0, 0, 1]]), step @ step @ step)


@pytest.mark.parametrize(
    "border, left_columns",
    [
        ("zero", lambda p: np.zeros_like(p[:, :4])),
        ("replicate", lambda p: np.repeat(p[:, :1], 4, axis=1)),
        ("reflect", lambda p: p[:, 4:0:-1]),
    ],
)
def test_border_modes_fill_the_uncovered_edge(border, left_columns):
    init = textured()
    pixels = np.asarray(init)
    frame = np.asarray(camera_frames(init, 2, translate_x="0:(4)", border=border)[1])
    assert np.array_equal(frame[:, 4:], pixels[:, :-4])
    assert np.array_equal(frame[:, :4], left_columns(pixels))


def test_modes_are_kept():
    gray = Image.fromarray(np.arange(30 * 40, dtype=np.uint16).reshape(30, 40).astype(np.uint8), "L")
    rgba = textured().convert("RGBA")
    assert [f.mode for f in camera_frames(gray, 2, translate_x=1)] == ["L", "L"]
    assert [f.mode for f in camera_frames(rgba, 2, translate_x=1)] == ["RGBA", "RGBA"]
    assert camera_frames(textured().convert("P"), 2, translate_x=1)[1].mode == "RGB"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zoom": "0:(1), 5:(0)"}, r"zoom '0:\(1\), 5:\(0\)': the value 0 is outside > 0 at character 10"),
        ({"zoom": -1.0}, "zoom .* outside > 0"),
        ({"angle": "0:(1) 3:(2)"}, "angle .* expected ',' between points at character 6"),
        ({"translate_x": "0:(x)"}, "translate_x .* expected a number .* at character 3"),
        ({"translate_y": "five"}, "translate_y .* at character 0"),
        ({"border": "wrap"}, "camera_border 'wrap' is not a border mode; allowed: replicate, reflect, zero"),
    ],
)
def test_bad_values_name_their_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        camera_frames(textured(), 4, **kwargs)
