"""Layers of the ldm / sgm network family that several networks here build: the SVD UNet and VAE
(``svd/``) and the demo's small SD-layout UNet (``toy_unet``).

Attribute names are the checkpoints' (``op`` for the downsampling conv, ``conv`` for the
upsampling one), so a network built from these loads an ldm or sgm state dict strictly. Pure
PyTorch; imports nothing from the WebUI.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) values, float32 ``[n] -> [n, dim]``: the
    cosines first, then the sines, frequencies ``max_period ** (-i / (dim // 2))``. This is ldm's
    and sgm's ``timestep_embedding`` and diffusers' ``Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)``; an odd ``dim`` gets one zero column at the end."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)  # sgm's order of float32 operations
    args = values.float()[:, None] * freqs[None]  # [n, half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class GroupNorm32(nn.GroupNorm):
    """32-group GroupNorm computed in at least float32 whatever the weights' dtype, as ldm's and
    sgm's ``GroupNorm32`` do (half-precision statistics over a whole 5-D video tensor lose too
    much); float64 stays float64 so a model can be checked in double precision."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(32, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        out = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return out.to(x.dtype)


class Downsample(nn.Module):
    """The UNet's stride-2 3x3 convolution (``op``), padded by one on every side, so an odd size
    rounds up."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upscaling, then a 3x3 convolution (``conv``). ``size`` is the target
    height and width when it is not simply twice the input: a UNet passes its skip connection's
    size, one less than twice where a stride-2 convolution rounded an odd size up."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
