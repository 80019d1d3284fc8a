"""The SVD UNet's attention layer: sgm's ``SpatialVideoTransformer`` (a per-frame transformer whose
every block is followed by a temporal transformer block over the frames, mixed in by a learned
factor). Attribute names follow the checkpoint keys. Imports nothing from the WebUI.

Shape vocabulary as in ``unet_blocks``: b videos, f frames, s = h*w tokens, c channels, d context.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ldm_layers import GroupNorm32, timestep_embedding
from .unet_blocks import Attention, ConditionedLayer, FeedForward, FrameConditioning, LearnedMix


class SpatialBlock(nn.Module):
    """sgm's ``BasicTransformerBlock``: self-attention, cross-attention to the image embedding and
    a GEGLU feed-forward, each pre-normed and residual, on ``[(b f), s, c]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class TemporalBlock(nn.Module):
    """sgm's ``VideoTransformerBlock`` as SVD configures it (``ff_in`` on, cross-attention on): the
    same three steps as ``SpatialBlock`` after a residual input feed-forward (``norm_in``,
    ``ff_in``), but every spatial position attends over the frames of its own video."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, video_context: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x`` ``[(b f), s, c]``; ``video_context`` ``[b, 1, d]`` (one row per video)."""
        s = x.shape[1]
        x = x.unflatten(0, (-1, num_frames)).transpose(1, 2).flatten(0, 1)  # [(b f), s, c] -> [(b s), f, c]
        x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), video_context) + x  # each context row serves s rows
        x = self.ff(self.norm3(x)) + x
        return x.unflatten(0, (-1, s)).transpose(1, 2).flatten(0, 1)  # [(b s), f, c] -> [(b f), s, c]


class SpatialVideoTransformer(ConditionedLayer):
    """GroupNorm (eps 1e-6), linear ``proj_in``; per depth step a ``SpatialBlock`` and, on its
    output plus a learned frame-position embedding (``time_pos_embed`` of the frame index's
    sinusoidal embedding), a ``TemporalBlock``, the two merged by ``time_mixer``; linear
    ``proj_out``; residual. The temporal blocks cross-attend to the first frame's context of each
    video (sgm's ``use_spatial_context``)."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm32(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            SpatialBlock(inner, heads, head_dim, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)
        self.time_stack = nn.ModuleList(
            TemporalBlock(inner, heads, head_dim, context_dim) for _ in range(depth)
        )
        self.time_pos_embed = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels)
        )
        self.time_mixer = LearnedMix()

    def forward(self, x: torch.Tensor, cond: FrameConditioning) -> torch.Tensor:
        rows, channels, height, width = x.shape
        f = cond.num_frames
        residual = x
        x = self.norm(x).flatten(2).transpose(1, 2)  # [(b f), c, h, w] -> [(b f), s, c]
        x = self.proj_in(x)
        frame_index = torch.arange(f, device=x.device).repeat(rows // f)  # [(b f)]
        frame_emb = timestep_embedding(frame_index, channels).to(x.dtype)
        frame_emb = self.time_pos_embed(frame_emb)[:, None, :]  # [(b f), 1, c]
        video_context = cond.context[::f]  # [(b f), 1, d] -> [b, 1, d]
        alpha = self.time_mixer.alpha(cond.image_only_indicator).reshape(-1, 1, 1)  # [(b f), 1, 1]
        for block, temporal in zip(self.transformer_blocks, self.time_stack, strict=True):
            x = block(x, cond.context)
            x_temporal = temporal(x + frame_emb, video_context, f)
            x = self.time_mixer(x, x_temporal, alpha)
        x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(rows, channels, height, width)  # [(b f), s, c] -> [(b f), c, h, w]
        return x + residual
