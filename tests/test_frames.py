"""FrameLayout: the frame count reaches motion blocks per call, and a bad layout is loud."""

import pytest
import torch

from motion_module.frames import FrameLayout, TemporalWindows
from motion_module.params import Fusion


def test_run_passes_frames_and_restores_previous_layout():
    layout = FrameLayout()
    seen = []

    def fn(x, frames):
        seen.append(frames)
        return x * 2

    x = torch.ones(8, 1, 1, 1)
    with layout.using(4):
        assert layout.blocks(8) == 2
        assert torch.equal(layout.run(fn, x), x * 2)
        with layout.using(8):
            layout.run(fn, x)
        assert layout.frames == 4
    assert layout.frames == 0
    assert seen == [4, 8]


def test_unset_or_mismatched_layout_raises():
    layout = FrameLayout()
    with pytest.raises(RuntimeError, match="without a frame count"):
        layout.run(lambda x, f: x, torch.zeros(4, 1, 1, 1))
    with layout.using(3), pytest.raises(RuntimeError, match="not a whole number"):
        layout.run(lambda x, f: x, torch.zeros(4, 1, 1, 1))


def test_temporal_windows_run_the_function_per_window_or_hand_it_the_windows():
    layout = FrameLayout()
    windows = TemporalWindows(((0, 1), (1, 2)), Fusion.FLAT, frame_budget=0)
    seen = []

    def fn(x, frames):
        seen.append((frames, x[:, 0, 0, 0].tolist()))
        return x + 1

    x = torch.arange(6.0).view(6, 1, 1, 1)  # two videos of three frames
    with layout.using(3, windows):
        y = layout.run(fn, x)
        handed = layout.run(fn, x, windowed=lambda v, f, w: (v * 0 + f, w))
    assert seen == [(2, [0.0, 1.0, 3.0, 4.0]), (2, [1.0, 2.0, 4.0, 5.0])]  # one window per call
    assert torch.equal(y, x + 1)  # frame 1 of each video is the mean of two equal predictions
    assert torch.equal(handed[0], torch.full_like(x, 3.0)) and handed[1] is windows
    assert layout.temporal_windows is None
    with layout.using(3):  # no windows: the function sees every frame, windowed is not used
        assert torch.equal(layout.run(fn, x, windowed=lambda v, f, w: None), x + 1)
