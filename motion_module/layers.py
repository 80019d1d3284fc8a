"""The temporal transformer of one motion-module site, with the official checkpoints' names.

Attribute names mirror the original AnimateDiff keys (docs/checkpoint-layouts.md) so a state dict loads
strictly. Frames are always passed in explicitly. Weights may be stored in another dtype (fp8,
fp16) than the activations: every layer casts its weights to the input's dtype when it computes.

Shape vocabulary: b = videos in the call (cond, uncond), f = frames per video, c = channels,
h, w = latent height/width, n = b·h·w pixel sequences, heads = 8, d = c / heads.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = 8
# CUDA launches SDPA with one grid row per (sequence, head); more than 65535 rows fail with
# "invalid configuration argument". SD1.5 at 512² with cond+uncond already has 2·64·64 pixel
# sequences × 8 heads = 65536 at its top level. Stay below it on every device.
SDPA_MAX_ROWS = 65535


def sinusoidal_table(length: int, channels: int) -> torch.Tensor:
    """(1, length, channels) float32: sin on even channels, cos on odd, as in the checkpoints."""
    return _table(length, channels).clone()


@functools.lru_cache(maxsize=16)
def _table(length: int, channels: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (length, 1)
    rate = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    table = torch.zeros(length, channels)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table.unsqueeze(0)


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if t is None or t.dtype == like.dtype:
        return t
    return t.to(like.dtype)


class Linear(nn.Linear):
    """nn.Linear that also computes when its weights are stored in another dtype (fp8, fp16).

    With matching dtypes (or under autocast) it defers to ``nn.Linear.forward`` looked up at call
    time, so class-level patches such as the WebUI Lora extension's still apply to motion layers.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (half-precision variance loses digits), cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class PositionalEncoding(nn.Module):
    """Holds the sinusoidal table ``pe`` (1, L, c); a persistent buffer only if the file has one."""

    def __init__(self, channels: int, length: int, persistent: bool = True, device=None):
        super().__init__()
        table = torch.empty(1, length, channels, device="meta") if str(device) == "meta" else None
        table = sinusoidal_table(length, channels).to(device) if table is None else table
        self.register_buffer("pe", table, persistent=persistent)

    def reset(self) -> None:
        """Recompute the table on the CPU (used after building on the meta device)."""
        self.pe = sinusoidal_table(self.pe.shape[1], self.pe.shape[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(
                f"{frames} frames in one window exceed this motion module's {self.pe.shape[1]} position "
                "slots; lower the context length (or pick a module with more slots, e.g. v2/v3 = 32)"
            )
        return x + self.pe[:, :frames].to(x.dtype)  # (n, f, c)


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_rows: int) -> torch.Tensor:
    """SDPA over (n, heads, f, d), split along n so that n·heads stays within ``max_rows``."""
    n, heads = q.shape[:2]
    step = max(1, max_rows // heads)
    if n <= step:
        return F.scaled_dot_product_attention(q, k, v)
    parts = [
        F.scaled_dot_product_attention(q[i : i + step], k[i : i + step], v[i : i + step])
        for i in range(0, n, step)
    ]
    return torch.cat(parts)


class TemporalSelfAttention(nn.Module):
    """Self-attention across the frames of each pixel; PE is added to the shared q/k/v input."""

    def __init__(self, channels: int, pe_length: int, pe_persistent: bool = True, device=None):
        super().__init__()
        self.heads = HEADS
        self.max_rows = SDPA_MAX_ROWS
        self.to_q = Linear(channels, channels, bias=False, device=device)
        self.to_k = Linear(channels, channels, bias=False, device=device)
        self.to_v = Linear(channels, channels, bias=False, device=device)
        self.to_out = nn.ModuleList([Linear(channels, channels, device=device), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(channels, pe_length, pe_persistent, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, f, c = x.shape  # x is already layer-normed
        x = self.pos_encoder(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, f, self.heads, c // self.heads).transpose(1, 2)  # (n, f, c) -> (n, heads, f, d)

        o = chunked_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)), self.max_rows)
        o = o.transpose(1, 2).reshape(n, f, c)  # (n, heads, f, d) -> (n, f, c)
        return self.to_out[1](self.to_out[0](o))


class GEGLU(nn.Module):
    def __init__(self, channels: int, inner: int, device=None):
        super().__init__()
        self.proj = Linear(channels, inner * 2, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)  # (…, 8c) -> 2 × (…, 4c): value first, then gate
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, channels: int, mult: int = 4, device=None):
        super().__init__()
        inner = channels * mult
        self.net = nn.ModuleList(
            [GEGLU(channels, inner, device), nn.Dropout(0.0), Linear(inner, channels, device=device)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalTransformerBlock(nn.Module):
    """Two pre-norm temporal self-attentions and a GEGLU feed-forward, each with a residual."""

    def __init__(self, channels: int, pe_length: int, pe_persistent: bool = True, device=None):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(channels, pe_length, pe_persistent, device) for _ in range(2)]
        )
        self.norms = nn.ModuleList([LayerNorm(channels, device=device) for _ in range(2)])
        self.ff = FeedForward(channels, device=device)
        self.ff_norm = LayerNorm(channels, device=device)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (n, f, c), one sequence of frames per pixel; every step but attention is per token."""
        for norm, attention in zip(self.norms, self.attention_blocks, strict=True):
            h = h + attention(norm(h))
        return h + self.ff(self.ff_norm(h))


class TemporalTransformer3DModel(nn.Module):
    """GroupNorm, proj_in, one temporal block, proj_out, plus the un-normalised input.

    ``norm_across_frames``: take the GroupNorm statistics over all frames of a video (SDXL beta)
    instead of per frame (SD1.5 families, HotShot).
    """

    def __init__(
        self,
        channels: int,
        pe_length: int,
        pe_persistent: bool = True,
        norm_across_frames: bool = False,
        device=None,
    ):
        super().__init__()
        self.norm_across_frames = norm_across_frames
        self.norm = nn.GroupNorm(32, channels, eps=1e-6, affine=True, device=device)
        self.proj_in = Linear(channels, channels, device=device)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, pe_length, pe_persistent, device)]
        )
        self.proj_out = Linear(channels, channels, device=device)

    def group_norm(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """GroupNorm in float32, per frame or across the frames of each video."""
        bf, c, height, width = x.shape
        w, b = self.norm.weight.float(), self.norm.bias.float()
        if not self.norm_across_frames:
            return F.group_norm(x.float(), self.norm.num_groups, w, b, self.norm.eps).to(x.dtype)
        v = x.float().view(bf // frames, frames, c, height * width)
        v = v.transpose(1, 2)  # (b, f, c, hw) -> (b, c, f, hw)
        v = F.group_norm(v, self.norm.num_groups, w, b, self.norm.eps)
        return v.transpose(1, 2).reshape(bf, c, height, width).to(x.dtype)  # (b, c, f, hw) -> (b·f, c, h, w)

    def forward(
        self, x: torch.Tensor, frames: int, scale: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """x + residual, or x + scale·residual: ``scale`` a number or an (h, w) map (motion strength).

        ``scale`` None adds the residual as trained, with no extra operation.
        """
        bf, c, height, width = x.shape
        b = bf // frames
        h = self.group_norm(x, frames).view(b, frames, c, height * width)
        h = h.permute(0, 3, 1, 2).reshape(b * height * width, frames, c)  # (b·f, c, h, w) -> (b·hw, f, c)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h)
        h = self.proj_out(h)
        h = h.view(b, height * width, frames, c).permute(0, 2, 3, 1)  # (b·hw, f, c) -> (b, f, c, hw)
        if isinstance(scale, torch.Tensor):
            h = h * scale.reshape(height * width)  # (h, w) map -> (hw,), broadcast over (b, f, c, hw)
        elif scale is not None:
            h = h * scale
        return (x.view(b, frames, c, height * width) + h).view(bf, c, height, width)  # add reads h strided


class VanillaTemporalModule(nn.Module):
    """One site of the motion module; the checkpoint nests everything under ``temporal_transformer``."""

    def __init__(
        self,
        channels: int,
        pe_length: int,
        pe_persistent: bool = True,
        norm_across_frames: bool = False,
        device=None,
    ):
        super().__init__()
        self.channels = channels
        self.temporal_transformer = TemporalTransformer3DModel(
            channels, pe_length, pe_persistent, norm_across_frames, device
        )

    def forward(
        self, x: torch.Tensor, frames: int, scale: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.shape[0] % frames:
            raise ValueError(f"{x.shape[0]} rows are not a whole number of {frames}-frame videos")
        return self.temporal_transformer(x, frames, scale)
