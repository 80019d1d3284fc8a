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

from .frames import TemporalWindows
from .window_fusion import frame_weights, fusion_weights, pack_windows

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

    def table(self, frames: int, dtype: torch.dtype) -> torch.Tensor:
        """(1, frames, c): the encodings of the first ``frames`` positions of a window."""
        if frames > self.pe.shape[1]:
            raise ValueError(
                f"{frames} frames in one window exceed this motion module's {self.pe.shape[1]} position "
                "slots; lower the context length (or pick a module with more slots, e.g. v2/v3 = 32)"
            )
        return self.pe[:, :frames].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table(x.shape[1], x.dtype)  # (n, f, c)


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
        x = self.pos_encoder(x)  # x is already layer-normed
        return self.attend(self.to_q(x), self.to_k(x), self.to_v(x))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of (n, f, c) layer-normed tokens before their positions are added.

        q/k/v have no bias, so to_q(x + pe) = to_q(x) + to_q(pe): the token part does not depend
        on where a frame sits in its window and can be computed once per frame.
        """
        return self.to_q(x), self.to_k(x), self.to_v(x)

    def position_terms(self, frames: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """What the positions 0..frames-1 of a window add to q, k and v: three (1, frames, c)."""
        pe = self.pos_encoder.table(frames, dtype)
        return self.to_q(pe), self.to_k(pe), self.to_v(pe)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over the frame axis of (n, f, c) q, k, v (contiguous), then ``to_out``."""
        n, f, c = q.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, f, self.heads, c // self.heads).transpose(1, 2)  # (n, f, c) -> (n, heads, f, d)

        o = chunked_attention(split(q), split(k), split(v), self.max_rows)
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
        return self.finish(h, 0)

    def finish(self, h: torch.Tensor, first: int) -> torch.Tensor:
        """The block from its attention number ``first`` on (the windowed pass did the ones before)."""
        for norm, attention in zip(self.norms[first:], self.attention_blocks[first:], strict=True):
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

    @property
    def windows_in_tokens(self) -> bool:
        """Whether ``forward`` can take context windows itself: only with a per-frame GroupNorm
        (statistics across frames would depend on which frames share a window)."""
        return not self.norm_across_frames

    def forward(
        self,
        x: torch.Tensor,
        frames: int,
        scale: float | torch.Tensor | None = None,
        windows: TemporalWindows | None = None,
    ) -> torch.Tensor:
        """x + residual, or x + scale·residual: ``scale`` a number or an (h, w) map (motion strength).

        ``scale`` None adds the residual as trained, with no extra operation. ``windows`` limits
        the temporal attention to context windows (``over_windows``); None attends over all frames.
        """
        bf, c, height, width = x.shape
        b = bf // frames
        h = self.group_norm(x, frames).view(b, frames, c, height * width)
        h = h.permute(0, 3, 1, 2).reshape(b * height * width, frames, c)  # (b·f, c, h, w) -> (b·hw, f, c)
        if windows is not None:
            h = self.over_windows(h, windows)
        else:
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

    def over_windows(self, tokens: torch.Tensor, windows: TemporalWindows) -> torch.Tensor:
        """proj_in, the blocks and proj_out over (n, frames, c) normed tokens, attention per window.

        Equals running the whole site on each window's frames and fusing the windows' outputs
        by weight, to float rounding: proj_in, the first attention's q/k/v (positions added
        afterwards, see ``TemporalSelfAttention.project``) and proj_out are per token and
        linear, so they run once per frame instead of once per window holding it (the fused
        mean is taken before proj_out, which commutes with it). Pixel sequences go in chunks:
        a chunk's per-frame tensors (the residual stream, q, k, v, the fused sum) hold half the
        tokens of a call of ``frame_budget`` frames of every sequence, and each packed call of
        windows at most a whole such call. The result is written over ``tokens`` (a chunk's
        input is read before its output is written), so the pass holds no second copy of them.
        """
        if not self.windows_in_tokens:
            raise ValueError(
                "a GroupNorm across frames cannot cut windows from its tokens; run the site per window"
            )
        n, frames, c = tokens.shape
        first, *rest = self.transformer_blocks
        attention, norm = first.attention_blocks[0], first.norms[0]
        longest = max(len(w) for w in windows.windows)
        budget = max(windows.frame_budget, longest)  # frames of every sequence one call may hold
        per_chunk = max(1, n * budget // (2 * frames))
        total = frame_weights(windows.windows, frames, windows.fusion).to(tokens.device)
        acc_dtype = torch.promote_types(tokens.dtype, torch.float32)
        positions: dict[int, tuple[torch.Tensor, ...]] = {}
        for start in range(0, n, per_chunk):
            h = self.proj_in(tokens[start : start + per_chunk])
            m = h.shape[0]
            q, k, v = attention.project(norm(h))
            fused = torch.zeros(m, frames, c, dtype=acc_dtype, device=h.device)
            for pack in pack_windows(windows.windows, n * budget // m):
                if windows.between is not None:
                    windows.between()
                length, count = len(pack[0]), len(pack)
                index = torch.tensor(pack, device=h.device).view(-1)  # (count·length,) frames
                if length not in positions:
                    positions[length] = attention.position_terms(length, h.dtype)
                # in place where a tensor is this pass's own: fresh CPU allocations cost page faults
                pq, pk, pv = positions[length]
                q_w, k_w, v_w = (
                    _windows_of(q, index, count).add_(pq),
                    _windows_of(k, index, count).add_(pk),
                    _windows_of(v, index, count).add_(pv),
                )
                y = attention.attend(q_w, k_w, v_w).add_(_windows_of(h, index, count))
                y = first.finish(y, 1)
                for block in rest:
                    y = block(y)
                weight = torch.tensor(fusion_weights(length, windows.fusion), dtype=acc_dtype)
                weight = weight.repeat(count).to(h.device).view(1, -1, 1)
                fused.index_add_(1, index, y.view(m, count * length, c).to(acc_dtype).mul_(weight))
            fused /= total.view(1, frames, 1)
            tokens[start : start + m] = self.proj_out(fused.to(tokens.dtype))
        return tokens


def _windows_of(t: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """The frames ``index`` of (m, F, c) tokens as ``count`` windows: (m·count, length, c)."""
    m, _, c = t.shape
    return t.index_select(1, index).view(m * count, -1, c)


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

    @property
    def windows_in_tokens(self) -> bool:
        return self.temporal_transformer.windows_in_tokens

    def forward(
        self,
        x: torch.Tensor,
        frames: int,
        scale: float | torch.Tensor | None = None,
        windows: TemporalWindows | None = None,
    ) -> torch.Tensor:
        if x.shape[0] % frames:
            raise ValueError(f"{x.shape[0]} rows are not a whole number of {frames}-frame videos")
        return self.temporal_transformer(x, frames, scale, windows)
