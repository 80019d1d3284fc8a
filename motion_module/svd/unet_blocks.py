"""The layers of the SVD spatio-temporal UNet (Stability's sgm ``VideoUNet``), pure PyTorch.

Attribute names follow the official checkpoint keys (``in_layers``, ``time_stack``, ``time_mixer``,
``transformer_blocks`` ...) so ``unet.py`` can load the file strictly. Imports nothing from the WebUI.

Shape vocabulary: b videos, f frames per video, c channels, h/w latent height/width, s = h*w
spatial tokens, d context width. Frames of one video are consecutive rows: ``(b f)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ldm_layers import GroupNorm32


@dataclass(frozen=True)
class FrameConditioning:
    """What every spatio-temporal layer needs besides its input: the time embedding per row
    ``[(b f), 4*model_channels]``, the image embedding ``[(b f), 1, d]``, the frame count and the
    ``[b, f]`` image-only indicator (1 = this row is a still image, its temporal paths are unused)."""

    emb: torch.Tensor
    context: torch.Tensor
    num_frames: int
    image_only_indicator: torch.Tensor


class LearnedMix(nn.Module):
    """sgm's ``AlphaBlender`` with the "learned_with_images" strategy: ``alpha * spatial +
    (1 - alpha) * temporal`` where ``alpha = sigmoid(mix_factor)`` for video rows and exactly 1 for
    rows the image-only indicator marks, so a still image sees only the spatial path."""

    def __init__(self):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([0.5]))

    def alpha(self, image_only_indicator: torch.Tensor) -> torch.Tensor:
        """``[b, f]`` weights of the spatial path."""
        video_alpha = torch.sigmoid(self.mix_factor)
        return torch.where(image_only_indicator.bool(), torch.ones_like(video_alpha), video_alpha)

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha = alpha.to(spatial.dtype)
        return alpha * spatial + (1.0 - alpha) * temporal


class Attention(nn.Module):
    """Multi-head attention (``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with bias) on
    ``torch.nn.functional.scaled_dot_product_attention``.

    ``context`` may have fewer rows than ``x``: each context row then serves
    ``x.shape[0] // context.shape[0]`` consecutive rows of ``x`` (the temporal blocks give one row per
    video for all ``(b s)`` rows). With a single context token the softmax weight is exactly 1, so
    the output is the projected value alone; SVD's image embedding is one token, and skipping the
    query projection over every spatial token saves one matmul per cross-attention."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            context = x
        share = x.shape[0] // context.shape[0]
        if context.shape[1] == 1:
            value = self.to_out(self.to_v(context))  # [rows/share, 1, c]
            return value.repeat_interleave(share, dim=0).expand(-1, x.shape[1], -1)  # [rows, n, c]
        if share > 1:
            context = context.repeat_interleave(share, dim=0)
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)  # [rows, heads, n, c/heads]
        return self.to_out(out.transpose(1, 2).flatten(2))  # [rows, n, c]

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [rows, n, c] -> [rows, heads, n, c/heads]


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x inner width (``net.0.proj``, ``net.2``).

    ``chunk_rows`` > 0 runs it on at most that many tokens at a time (every token is independent),
    bounding the ``[tokens, 8c]`` intermediate; the output is the same up to float rounding."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim))
        self.chunk_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [..., c] -> [tokens, c]
        rows = self.chunk_rows
        if not rows or flat.shape[0] <= rows:
            return self.net(x)
        out = torch.empty_like(flat)
        for start in range(0, flat.shape[0], rows):
            out[start : start + rows] = self.net(flat[start : start + rows])
        return out.view(x.shape)  # [tokens, c] -> [..., c]


class ResBlock(nn.Module):
    """sgm's ``ResBlock`` (no scale-shift norm): norm, SiLU, conv; add the projected time embedding;
    norm, SiLU, conv; plus the (1x1-projected when widths differ) input. ``dims`` 2 is the per-frame
    block, 3 the temporal one whose kernel spans only frames and whose GroupNorm statistics span
    a whole video."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dims: int = 2, kernel: int = 3):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        size = 3 if dims == 2 else (kernel, 1, 1)
        padding = 1 if dims == 2 else (kernel // 2, 0, 0)
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), conv(channels, out_channels, size, padding=padding)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Identity(),
            conv(out_channels, out_channels, size, padding=padding),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else conv(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]  # 2-D: [n, c, 1, 1]
        return self.skip_connection(x) + self.out_layers(h)


class TemporalResBlock(ResBlock):
    """The 3-D ResBlock on ``[b, c, f, h, w]`` with the time embedding given per frame ``[b, f, e]``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)  # [b, f, c]
        h = h + emb_out.transpose(1, 2)[..., None, None]  # [b, f, c] -> [b, c, f, 1, 1]
        return self.skip_connection(x) + self.out_layers(h)


class ConditionedLayer(nn.Module):
    """A layer that reads the ``FrameConditioning`` (the UNet's stages pass it only to these)."""


class VideoResBlock(ResBlock, ConditionedLayer):
    """Per-frame ResBlock, then a temporal ResBlock (kernel ``(k, 1, 1)``) mixed in by a learned
    factor (``time_stack``, ``time_mixer``). It extends ``ResBlock`` as in sgm, so the per-frame
    weights keep their keys at the block's own level (``in_layers`` ...)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, temporal_kernel: int):
        super().__init__(channels, emb_channels, out_channels)
        self.time_stack = TemporalResBlock(out_channels, emb_channels, out_channels, 3, temporal_kernel)
        self.time_mixer = LearnedMix()

    def forward(self, x: torch.Tensor, cond: FrameConditioning) -> torch.Tensor:
        f = cond.num_frames
        h = super().forward(x, cond.emb)  # [(b f), c, h, w]
        video = h.unflatten(0, (-1, f)).transpose(1, 2)  # [(b f), c, h, w] -> [b, c, f, h, w]
        temporal = self.time_stack(video, cond.emb.unflatten(0, (-1, f)))  # [b, c, f, h, w]
        alpha = self.time_mixer.alpha(cond.image_only_indicator)[:, None, :, None, None]  # [b, 1, f, 1, 1]
        mixed = self.time_mixer(video, temporal, alpha)
        return mixed.transpose(1, 2).flatten(0, 1)  # [b, c, f, h, w] -> [(b f), c, h, w]
