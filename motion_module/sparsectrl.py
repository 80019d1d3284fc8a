"""The motion modules inside a SparseCtrl model, as sd-webui-controlnet builds them.

A SparseCtrl checkpoint (AnimateDiff v3's RGB and scribble SparseCtrl) is a ControlNet whose
input blocks carry motion modules of the v3 layout: two per down level of SD1.5's four
(widths 320, 640, 1280, 1280), keys ``down_blocks.{i}.motion_modules.{j}.temporal_transformer…``,
32 position slots. ControlNet builds them through us (``scripts.animatediff_mm.MotionWrapper``),
loads the checkpoint's motion keys strictly and appends each site to its own hint network's
input blocks, which call a layer with ``x`` only. So each site reads the frame count from the
layout of the AnimateDiff job running now (``layout()``), like the sites we inject into the UNet.
Imports no WebUI module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .frames import FrameLayout, TemporalWindows
from .layers import VanillaTemporalModule
from .spec import SPECS, Family

SD15_WIDTHS = ((320, 320), (640, 640), (1280, 1280), (1280, 1280))
PE_LENGTH = 32

LayoutGetter = Callable[[], FrameLayout | None]


class LayoutSite(VanillaTemporalModule):
    """A site called with ``x`` only: the frames come from the running job's layout."""

    def __init__(self, channels: int, layout: LayoutGetter, norm_across_frames: bool):
        super().__init__(channels, PE_LENGTH, True, norm_across_frames)
        self._layout = layout

    def forward(
        self,
        x: torch.Tensor,
        frames: int | None = None,
        scale: float | torch.Tensor | None = None,
        windows: TemporalWindows | None = None,
    ) -> torch.Tensor:
        if frames is not None:
            return super().forward(x, frames, scale, windows)
        layout = self._layout()
        if layout is None:
            raise RuntimeError(
                "SparseCtrl's motion modules ran outside an AnimateDiff job: enable AnimateDiff to use a "
                "SparseCtrl model"
            )
        site = super()
        windowed = (
            (lambda rows, count, windows: site.forward(rows, count, None, windows))
            if self.windows_in_tokens
            else None
        )
        return layout.run(lambda rows, count: site.forward(rows, count), x, windowed)


class _Level(nn.Module):
    def __init__(self, sites: list[LayoutSite]):
        super().__init__()
        self.motion_modules = nn.ModuleList(sites)


class SparseCtrlMotion(nn.Module):
    """``down_blocks[i].motion_modules[j]``, the key layout of a SparseCtrl checkpoint."""

    def __init__(self, layout: LayoutGetter, widths: tuple[tuple[int, ...], ...] = SD15_WIDTHS):
        super().__init__()
        across = SPECS[Family.V3].gn_across_frames_in_module
        self.down_blocks = nn.ModuleList(
            [_Level([LayoutSite(width, layout, across) for width in level]) for level in widths]
        )
