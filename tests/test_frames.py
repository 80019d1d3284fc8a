"""FrameLayout: the frame count reaches motion blocks per call, and a bad layout is loud."""

import pytest
import torch

from motion_module.frames import FrameLayout


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


def test_temporal_runner_is_used_when_set():
    layout = FrameLayout()
    calls = []

    def runner(fn, x, frames):
        calls.append(frames)
        return fn(x, frames) + 1

    with layout.using(2, runner):
        y = layout.run(lambda x, f: x, torch.zeros(4, 1, 1, 1))
    assert calls == [2] and torch.equal(y, torch.ones(4, 1, 1, 1))
    assert layout.temporal_runner is None
