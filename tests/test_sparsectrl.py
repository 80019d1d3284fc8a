"""SparseCtrl's motion modules as ControlNet builds them through ``scripts.animatediff_mm``: the
checkpoint's motion keys load strictly, each site (called with ``x`` only) computes what a
motion-module site computes for the running job's frame count, and the job hands its layout
over for exactly its own duration."""

from __future__ import annotations

import pytest
import torch
from factories import make_mm_state_dict

from motion_module.frames import FrameLayout
from motion_module.spec import Family
from scripts import animatediff_mm
from scripts.animatediff_webui import host_changes
from scripts.animatediff_webui.patch_session import PatchSession

pytestmark = pytest.mark.usefixtures("single_thread")
MINI = ((32, 32), (64, 64), (128, 128), (128, 128))


@pytest.fixture
def wrapper(monkeypatch):
    monkeypatch.setattr(animatediff_mm.MotionWrapper, "widths", MINI)
    return animatediff_mm.MotionWrapper("", "", animatediff_mm.MotionModuleType.SparseCtrl)


def sparsectrl_keys():
    """A SparseCtrl checkpoint's motion keys: the down sites of a v3 motion module."""
    state = make_mm_state_dict(Family.V3, pe_len=32, include_pe=True, seed=4)
    return {k: v for k, v in state.items() if k.startswith("down_blocks.")}


def test_the_motion_keys_load_strictly_and_sites_follow_the_job_layout(wrapper):
    wrapper.load_state_dict(sparsectrl_keys(), strict=True)
    site = wrapper.down_blocks[1].motion_modules[0]  # what ControlNet appends to its input block
    x = torch.randn(2 * 8, 64, 4, 4)
    layout = FrameLayout()
    session = PatchSession()
    host_changes.sparsectrl_layout(session, layout)
    with torch.no_grad(), layout.using(8):
        out = site(x)
        expected = site(x, 8)  # the plain site computation for 8-frame videos
    assert torch.equal(out, expected) and not torch.equal(out, x)
    session.close()
    assert animatediff_mm.current_layout == []
    with pytest.raises(RuntimeError, match="enable AnimateDiff to use a SparseCtrl model"):
        site(x)


def test_only_sparsectrl_is_built(wrapper):
    with pytest.raises(ValueError, match="SparseCtrl motion modules only"):
        animatediff_mm.MotionWrapper("", "", "AnimateDiffV3")
    extra = sparsectrl_keys() | {
        "mid_block.motion_modules.0.temporal_transformer.norm.weight": torch.ones(128)
    }
    with pytest.raises(RuntimeError, match="Unexpected key"):
        wrapper.load_state_dict(extra, strict=True)
