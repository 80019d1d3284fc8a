"""The across-frames GroupNorm that v1 and HotShot-XL expect in the UNet.

Those families were trained with a 3-D UNet whose ResBlock and output GroupNorms took statistics
over all frames of a video. The factory wraps whatever forward a GroupNorm has now (the WebUI may
have patched it) so it sees (b, c, f, h, w) instead of (b·f, c, h, w). The injection applies it to
specific module instances and removes it with the motion module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .frames import FrameLayout

Forward = Callable[[torch.Tensor], torch.Tensor]


def across_frames_forward(original_forward: Forward, layout: FrameLayout) -> Forward:
    """A GroupNorm forward that normalises each video's frames together; b = rows // frames."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        b = layout.blocks(x.shape[0])
        f = layout.frames
        rest = x.shape[1:]
        v = x.reshape(b, f, *rest).transpose(1, 2)  # (b·f, c, h, w) -> (b, c, f, h, w)
        y = original_forward(v)
        return y.transpose(1, 2).reshape(b * f, *rest)  # (b, c, f, h, w) -> (b·f, c, h, w)

    forward.across_frames = True  # type: ignore[attr-defined]
    return forward


def unet_group_norms(unet: nn.Module, resblocks: list[nn.Module]) -> list[nn.GroupNorm]:
    """The norms the official 3-D UNet ran across frames: ResBlock in/out norms and ``out[0]``.

    Not the SpatialTransformer norms (per frame in the 3-D UNet too), not the motion module's.
    """
    found: list[nn.GroupNorm] = []
    for block in resblocks:
        for seq_name in ("in_layers", "out_layers"):
            seq = getattr(block, seq_name, None)
            if seq is not None and len(seq) and isinstance(seq[0], nn.GroupNorm):
                found.append(seq[0])
    out = getattr(unet, "out", None)
    if isinstance(out, nn.Sequential) and len(out) and isinstance(out[0], nn.GroupNorm):
        found.append(out[0])
    return found
