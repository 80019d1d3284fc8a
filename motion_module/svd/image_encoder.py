"""SVD's image embedder: the OpenCLIP ViT-H/14 vision tower and the preprocessing in front of it.

SVD conditions its cross-attention on one vector per video: the CLIP image embedding of the
conditioning picture. The official checkpoints carry the OpenCLIP model (its text transformer removed)
under ``conditioner.embedders.0.open_clip.model.``; the vision tower is ``visual.`` below that
(``PREFIX``). Parameter names here are those keys with ``PREFIX`` stripped, so
``ImageEncoder(config).load_state_dict(stripped, strict=True)`` works.

The tower (OpenCLIP ``VisionTransformer``, pre-LN): a patch convolution without bias, a class
token and learned positions, ``ln_pre``, residual blocks ``x + attn(ln_1(x))`` then
``x + mlp(ln_2(x))`` (exact GELU, MLP 4x wide, q/k/v packed in ``in_proj_weight``), ``ln_post``
on the class token and a projection matrix ``proj`` (width x output_dim, applied as ``x @ proj``).
LayerNorm eps 1e-5. ViT-H/14: width 1280, 32 blocks, 16 heads, patch 14, 224x224 input, output
1024.

Shape vocabulary: b = images, n = tokens (1 + grid²), c = width, heads = c / HEAD_WIDTH.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

OPEN_CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."
PREFIX = OPEN_CLIP_PREFIX + "visual."

# The reference embedder deletes only the OpenCLIP text transformer, so the rest of the text side
# stays in the saved state dict. The loader must accept these keys when present and not use them.
# Derived from the reference code (a real file's header was not read): ``attn_mask`` is a
# non-persistent buffer in recent OpenCLIP versions and is listed in case an older one saved it.
IGNORED_KEYS = tuple(
    OPEN_CLIP_PREFIX + name
    for name in (
        "positional_embedding",
        "text_projection",
        "logit_scale",
        "token_embedding.weight",
        "ln_final.weight",
        "ln_final.bias",
        "attn_mask",
    )
)

# Width of one attention head in OpenCLIP's ViT-H/14 (``head_width`` in its model config). The
# weights cannot tell the head count (q/k/v are packed into one matrix), so it is width / 80.
HEAD_WIDTH = 80

# CLIP's per-channel normalisation of [0, 1] pixels.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """What the weights tell (``heads`` follows from ``width`` and ``HEAD_WIDTH``)."""

    width: int
    layers: int
    heads: int
    mlp_width: int
    patch_size: int
    image_size: int  # the side of the square input; the positional table fixes it
    output_dim: int


def _tensor(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"SVD image encoder: key {key!r} is missing (expected under {PREFIX!r})")
    value = state_dict[key]
    if value.ndim != ndim:
        raise ValueError(
            f"SVD image encoder: {key} has shape {tuple(value.shape)}; expected {ndim} dimensions"
        )
    return value


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ImageEncoderConfig:
    """Read the tower's sizes from its weights (keys with ``PREFIX`` stripped)."""
    conv = _tensor(state_dict, "conv1.weight", 4)
    width, in_channels, patch, patch_w = conv.shape
    if in_channels != 3 or patch != patch_w:
        raise ValueError(
            f"SVD image encoder: conv1.weight has shape {tuple(conv.shape)}; expected (width, 3, p, p)"
        )
    tokens = _tensor(state_dict, "positional_embedding", 2).shape[0]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(
            f"SVD image encoder: positional_embedding has {tokens} rows; expected 1 + a square number"
        )
    if width % HEAD_WIDTH:
        raise ValueError(
            f"SVD image encoder: width {width} is not a multiple of the head width {HEAD_WIDTH} (ViT-H/14)"
        )
    block = re.compile(r"transformer\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := block.match(key))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError(
            f"SVD image encoder: transformer.resblocks indices {sorted(indices)} are not 0..n-1 with n >= 1"
        )
    return ImageEncoderConfig(
        width=width,
        layers=len(indices),
        heads=width // HEAD_WIDTH,
        mlp_width=_tensor(state_dict, "transformer.resblocks.0.mlp.c_fc.weight", 2).shape[0],
        patch_size=patch,
        image_size=grid * patch,
        output_dim=_tensor(state_dict, "proj", 2).shape[1],
    )


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with q, k, v stacked in one matrix (``nn.MultiheadAttention``'s
    parameter names, which the checkpoints use)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (b, n, 3c)
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (b, heads, n, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width)
        self.attn = PackedSelfAttention(config.width, config.heads)
        self.ln_2 = nn.LayerNorm(config.width)
        self.mlp = Mlp(config.width, config.mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ResidualBlocks(nn.Module):
    """Holds the blocks as ``resblocks`` (the checkpoints' ``transformer.resblocks.N``)."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class ImageEncoder(nn.Module):
    """The vision tower: CLIP-normalised pixels (b, 3, S, S) → image embeddings (b, output_dim)."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        c, grid = config.width, config.image_size // config.patch_size
        scale = c**-0.5
        self.conv1 = nn.Conv2d(3, c, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(c))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, c))
        self.ln_pre = nn.LayerNorm(c)
        self.transformer = ResidualBlocks(config)
        self.ln_post = nn.LayerNorm(c)
        self.proj = nn.Parameter(scale * torch.randn(c, config.output_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(
                f"SVD image encoder: pixels have shape {tuple(pixels.shape)}; expected (b, 3, {size}, {size})"
            )
        x = self.conv1(pixels.to(self.proj.dtype)).flatten(2).transpose(1, 2)  # (b, grid², c)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (b, n, c)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


def resize_antialiased(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (corners aligned) of (b, c, h, w), blurred first when it shrinks.

    This is the resize the reference embedder calls (kornia's ``resize`` with ``antialias``): when
    either side shrinks, a separable Gaussian with sigma ``max((factor - 1) / 2, 0.001)`` per axis
    and an odd kernel of ``max(int(4 sigma), 3)`` taps (reflected borders) runs first; an image
    already at ``size`` comes back unchanged. diffusers' SVD pipeline uses the same recipe.
    """
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:
        sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        image = _blur_axis(image, sigmas[1], dim=-1)
        image = _blur_axis(image, sigmas[0], dim=-2)
    return F.interpolate(image, size=size, mode="bicubic", align_corners=True)


def _blur_axis(image: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    taps = max(int(4.0 * sigma), 3)
    taps += 1 - taps % 2  # odd
    offsets = torch.arange(taps, dtype=image.dtype, device=image.device) - taps // 2
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum()
    b, c, h, w = image.shape
    pad = taps // 2
    if dim == -1:
        padded = F.pad(image, (pad, pad, 0, 0), mode="reflect")
        weight = kernel.view(1, 1, 1, taps)
    else:
        padded = F.pad(image, (0, 0, pad, pad), mode="reflect")
        weight = kernel.view(1, 1, taps, 1)
    return F.conv2d(padded.reshape(b * c, 1, *padded.shape[-2:]), weight).view(b, c, h, w)


def preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """SVD's path from an image in [-1, 1] (b, 3, h, w) to the tower's input (b, 3, size, size):
    antialiased resize to a square (no crop: the aspect ratio is not kept, as in the reference),
    then [0, 1], then CLIP's mean/std."""
    x = resize_antialiased(image, (size, size))
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def embed_image(encoder: ImageEncoder, image: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] (b, 3, h, w) → CLIP image embedding (b, output_dim): what SVD's UNet
    cross-attends to (one token per video). The pipeline feeds zeros of the same shape as the
    unconditional embedding."""
    return encoder(preprocess(image.float(), encoder.config.image_size))
