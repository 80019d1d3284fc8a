"""The layers of SVD's autoencoder (``vae.py``), pure PyTorch, under the checkpoint's ldm names.

Spatial blocks (``ResnetBlock``, ``AttnBlock``, ``Downsample``, the ``Level`` and ``MidBlock``
containers) serve both the conditioning encoder and the decoder; the temporal ones
(``VideoResBlock``, ``TimeMixConv``) are the decoder's, mixing neighbouring frames.

Shape vocabulary as in ``vae``: b = videos, f = frames per video (or per decode chunk),
c = channels, h, w = spatial size; 5-D tensors are (b, c, f, h, w), 4-D ones (b·f, c, h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ldm_layers import GroupNorm32

GROUPS = 32  # GroupNorm groups everywhere in this autoencoder


def norm(channels: int) -> nn.GroupNorm:
    """The spatial blocks' GroupNorm (eps 1e-6, as trained)."""
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm → swish → conv, twice, plus the input (through a 1x1 ``nin_shortcut`` when the width
    changes). No timestep input: the autoencoder has none."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of each image; q/k/v/proj_out are 1x1 convs."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (n, 1, h·w, c)
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right only (as trained; the
    UNet's ``ldm_layers.Downsample`` pads every side)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), then ``downsample``/``upsample`` where the
    size changes (the ldm layout also has an ``attn`` list per level, empty in SVD)."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            self.add_module(resample_name, resample)


class MidBlock(nn.Module):
    def __init__(self, block_1: nn.Module, channels: int, block_2: nn.Module):
        super().__init__()
        self.block_1 = block_1
        self.attn_1 = AttnBlock(channels)
        self.block_2 = block_2


class TemporalResBlock(nn.Module):
    """The reference's ``time_stack``: a ResBlock of 3-D convs over (frames, h, w) with names
    ``in_layers.{0,2}`` / ``out_layers.{0,3}`` (norm, swish, conv; norm, swish, dropout, conv).
    Its GroupNorm (eps 1e-5) takes statistics over all frames it is given."""

    def __init__(self, channels: int, kernel: tuple[int, int, int]):
        super().__init__()
        padding = tuple(k // 2 for k in kernel)
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv3d(channels, channels, kernel, padding=padding)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv3d(channels, channels, kernel, padding=padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out_layers(self.in_layers(x))


def _to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(b·f, c, h, w) → (b, c, f, h, w)."""
    n, c, h, w = x.shape
    return x.view(n // frames, frames, c, h, w).transpose(1, 2)


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) → (b·f, c, h, w)."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


class VideoResBlock(ResnetBlock):
    """A spatial ResnetBlock, then ``time_stack`` across frames, blended as
    ``a · temporal + (1 - a) · spatial`` with ``a = sigmoid(mix_factor)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int]):
        super().__init__(in_channels, out_channels)
        self.time_stack = TemporalResBlock(out_channels, kernel)
        self.mix_factor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        spatial = _to_video(super().forward(x), frames)
        alpha = torch.sigmoid(self.mix_factor).to(spatial.dtype)
        return _to_frames(alpha * self.time_stack(spatial) + (1.0 - alpha) * spatial)


class TimeMixConv(nn.Conv2d):
    """The last conv: a 2-D conv per frame, then ``time_mix_conv``, a 3-D conv across frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int]):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.time_mix_conv = nn.Conv3d(
            out_channels, out_channels, kernel, padding=tuple(k // 2 for k in kernel)
        )

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return _to_frames(self.time_mix_conv(_to_video(super().forward(x), frames)))
