"""Real host, SparseCtrl through sd-webui-controlnet v1.1.455: one still image on a SparseCtrl RGB
unit animates a video from its first frame.

ControlNet builds SparseCtrl at SD1.5's full widths (320 channels, context 768) and loads it
strictly, with its motion modules built through our ``scripts.animatediff_mm``; so this file runs
on its own server with the full-size random SD1.5 checkpoint and v3 module
(``sparsectrl_server``, several GB of RAM) and a random SparseCtrl RGB model written at test
time. With no ``keyframe:`` line ControlNet puts the image (VAE-encoded, plus a mask channel) on
frame 0 and zeros elsewhere. 8 frames of 64×64, 2 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from realhost_server import MM_NAME, encode_image, txt2img_job
from test_controlnet import assert_plain_unchanged, gif_frames, gif_of, record, reset_record

pytestmark = [pytest.mark.realhost, pytest.mark.slow]

FRAMES = 8


def still_image() -> Image.Image:
    """Coloured stripes: far from what the random model draws on its own."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    for k in range(8):
        pixels[:, 8 * k : 8 * k + 8] = [(37 * k) % 256, (91 * k + 40) % 256, (173 * k + 90) % 256]
    return Image.fromarray(pixels)


def sparsectrl_job(server, enabled: bool) -> dict:
    unit = {
        "enabled": enabled,
        "module": "none",
        "model": server.sparsectrl_model,
        "weight": 1.0,
        "image": encode_image(still_image()),
    }
    return txt2img_job(
        seed=21,
        steps=2,
        alwayson_scripts={
            "AnimateDiff": {
                "args": [{"enable": True, "model": MM_NAME, "format": ["GIF"], "video_length": FRAMES}]
            },
            "ControlNet": {"args": [unit]},
        },
    )


def test_one_image_on_sparsectrl_animates_from_frame_0(sparsectrl_server):
    """The SparseCtrl unit loads (its motion keys through our MotionWrapper, strictly) and runs
    on every UNet call with a 5-channel hint: frame 0's VAE latent and mask, zeros on frames
    1-7, the same for cond and uncond rows; frame 0 differs from the same job with the unit
    off, and a plain txt2img afterwards is pixel-identical to one from a fresh start."""
    server = sparsectrl_server
    reset_record(server)
    offset = server.log_size()
    controlled = gif_frames(gif_of(server.generate("/sdapi/v1/txt2img", sparsectrl_job(server, True))))
    log = server.log_since(offset)
    rec = record(server)
    assert rec["errors"] == [], rec["errors"]
    assert "SparseCtrl: control images will be applied to frames: [0]" in log, log[-3000:]
    assert len(controlled) == FRAMES
    hooked = rec["hooks"][-1][0]
    assert hooked["hint_shape"] == [2 * FRAMES, 5, 8, 8], hooked["hint_shape"]
    rows = hooked["hint_rows"]
    assert rows[:FRAMES] == rows[FRAMES:], "cond and uncond hint rows differ"
    assert len(set(rows[1:FRAMES])) == 1 and rows[0] != rows[1], "the image is not on frame 0 alone"
    assert rec["calls"], f"SparseCtrl never ran:\n{server.log_tail()}"
    for call in rec["calls"]:
        assert call["hint_shape"][0] == call["x_shape"][0] and call["hint_shape"][1] == 5, call

    off = gif_frames(gif_of(server.generate("/sdapi/v1/txt2img", sparsectrl_job(server, False))))
    first = float(np.abs(controlled[0] - off[0]).mean())
    rest = float(np.mean([np.abs(a - b).mean() for a, b in zip(controlled[1:], off[1:], strict=True)]))
    print(f"SparseCtrl: frame 0 moved {first:.2f} levels, frames 1-7 {rest:.2f} (mean)")
    assert first >= 2.0, f"SparseCtrl barely changes frame 0: {first:.2f} levels mean"
    assert_plain_unchanged(server, "a SparseCtrl job")
