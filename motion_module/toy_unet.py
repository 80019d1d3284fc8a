"""A small random-weight UNet with the WebUI (ldm) block layout, for the demo and quick checks.

Same structure the injection looks for: ``input_blocks`` / ``middle_block`` / ``output_blocks`` of
sequentials holding ResBlocks (``in_layers``/``out_layers``/``out_channels``), SpatialTransformers
(``proj_in``/``transformer_blocks``), Downsample and Upsample, and ``out`` starting with a
GroupNorm. Widths and blocks per level come from a motion module's ``SitePlan``, so any motion
module (scaled-down or real) fits. Plain torch: the engine never imports ldm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ldm_layers import Downsample, Upsample, timestep_embedding
from .model import SitePlan


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(
            norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class SpatialTransformer(nn.Module):
    """Self-attention over the pixels of each frame, then cross-attention to the text context."""

    def __init__(self, channels: int, context_dim: int, heads: int = 4):
        super().__init__()
        self.norm = norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                nn.MultiheadAttention(channels, heads, batch_first=True),
                nn.MultiheadAttention(channels, heads, kdim=context_dim, vdim=context_dim, batch_first=True),
            ]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (b·f, c, h, w) -> (b·f, hw, c)
        self_attn, cross_attn = self.transformer_blocks
        t = t + self_attn(t, t, t, need_weights=False)[0]
        t = t + cross_attn(t, context, context, need_weights=False)[0]
        t = t.transpose(1, 2).reshape(b, c, h, w)  # (b·f, hw, c) -> (b·f, c, h, w)
        return x + self.proj_out(t)


class TimestepEmbedSequential(nn.Sequential):
    """Hands each layer what it takes: ResBlocks the embedding, transformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)  # convs, resampling, and injected motion blocks
        return x


class ToyUNet(nn.Module):
    """eps-prediction UNet: forward(x (b·f, c, h, w), timesteps (b·f,), context (b·f, tokens, d))."""

    def __init__(self, plan: SitePlan, in_channels: int = 4, context_dim: int = 64, attention_levels=None):
        super().__init__()
        widths = [level[0] for level in plan.down]
        per_level = [len(level) for level in plan.down]
        ups = [len(level) for level in reversed(plan.up)]  # up_blocks.0 is the deepest level
        levels = len(widths)
        attention = set(range(levels - 1)) if attention_levels is None else set(attention_levels)
        self.model_channels = widths[0]
        emb_dim = 4 * widths[0]
        self.time_embed = nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def layers(cin: int, cout: int, level: int) -> list[nn.Module]:
            res: list[nn.Module] = [ResBlock(cin, emb_dim, cout)]
            return res + ([SpatialTransformer(cout, context_dim)] if level in attention else [])

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, widths[0], 3, padding=1))]
        )
        skips, ch = [widths[0]], widths[0]
        for level, width in enumerate(widths):
            for _ in range(per_level[level]):
                self.input_blocks.append(TimestepEmbedSequential(*layers(ch, width, level)))
                ch = width
                skips.append(ch)
            if level < levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skips.append(ch)
        middle = [ResBlock(ch, emb_dim, ch), SpatialTransformer(ch, context_dim), ResBlock(ch, emb_dim, ch)]
        self.middle_block = TimestepEmbedSequential(*middle)
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            for i in range(ups[level]):
                block = layers(ch + skips.pop(), widths[level], level)
                ch = widths[level]
                if level > 0 and i == ups[level] - 1:
                    block.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*block))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


def demo_plan(width: int = 32, levels: int = 4, mid: bool = False) -> SitePlan:
    """The site layout of an SD1.5-shaped motion module scaled down to ``width`` base channels."""
    widths = [width * m for m in (1, 2, 4, 4)[:levels]]
    return SitePlan(
        down=tuple((w, w) for w in widths),
        up=tuple((w, w, w) for w in reversed(widths)),
        mid=widths[-1] if mid else None,
        pe_length=None,
    )
