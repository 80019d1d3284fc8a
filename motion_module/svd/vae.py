"""SVD's autoencoder: the KL encoder that makes the conditioning latent, and the temporal decoder.

Two components with their own prefixes in the official checkpoints (parameter names here are the
keys with the prefix stripped, so ``load_state_dict(stripped, strict=True)`` works):

- ``ENCODER_PREFIX`` (``conditioner.embedders.3.encoder.``): the conditioner's "mode-only" KL
  autoencoder. ``encoder.*`` (the ldm ``Encoder``: ResnetBlocks, strided-conv downsampling, a
  mid block with one single-head attention, 2·z channels out) and ``quant_conv.*`` (1x1 conv,
  2·z → 2·z). The latent is the mean of the Gaussian, i.e. the first z channels; no sampling.
- ``DECODER_PREFIX`` (``first_stage_model.decoder.``): the ``VideoDecoder`` (time mode
  "conv-only"): the ldm ``Decoder`` whose ResnetBlocks are followed by a temporal ResBlock
  (``time_stack``, 3-D convs with kernel (3, 1, 1) over frames) blended with the spatial result
  by ``sigmoid(mix_factor)`` (1 = all temporal), and whose last conv is followed by a 3-D conv
  over frames (``conv_out.time_mix_conv``). Its attention is per frame. There is no
  ``post_quant_conv``: the first stage is the plain ``AutoencodingEngine``.

Keys the loader must accept and leave unused are listed in ``IGNORED_PREFIXES``. The layers
these networks are built of are in ``vae_blocks``.

Latent scale: the diffusion model works on ``latent * LATENT_SCALE``. The conditioning latent
from ``encode`` is NOT scaled (the reference's conditioner uses scale factor 1.0; diffusers' SVD
pipeline also feeds the encoder's mode as is); the sampled latents are divided by
``LATENT_SCALE`` before ``TemporalDecoder.decode``.

Shape vocabulary: b = videos, f = frames per video (or per decode chunk), c = channels,
h, w = spatial size; 5-D tensors are (b, c, f, h, w), 4-D ones (b·f, c, h, w) frame-major per video.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ldm_layers import Upsample
from .vae_blocks import Downsample, Level, MidBlock, ResnetBlock, TimeMixConv, VideoResBlock, norm

ENCODER_PREFIX = "conditioner.embedders.3.encoder."
DECODER_PREFIX = "first_stage_model.decoder."

# In the official files, ``first_stage_model.encoder.`` holds the first stage's own encoder (106
# tensors, no quant_conv); the reference makes the conditioning latent with the conditioner's copy
# instead, so it is not loaded. The conditioner's autoencoder class also builds a decoder and a
# post_quant_conv; whether a file stores them was not checked, so they are accepted if present.
IGNORED_PREFIXES = (
    "first_stage_model.encoder.",
    ENCODER_PREFIX + "decoder.",
    ENCODER_PREFIX + "post_quant_conv.",
)

LATENT_SCALE = 0.18215
LATENT_CHANNELS = 4  # SVD's latent: 4 channels, VAE_DOWNSCALE times smaller than the picture
VAE_DOWNSCALE = 8


@dataclass(frozen=True)
class VaeEncoderConfig:
    """``channels[i]`` is the width of level i (level 0 at full resolution); every level but the
    last halves the size, so latents are 2^(levels-1) times smaller."""

    in_channels: int
    channels: tuple[int, ...]
    res_blocks: int  # ResnetBlocks per level
    z_channels: int  # the encoder outputs 2·z (mean and log-variance)
    embed_dim: int  # latent channels after quant_conv (mean part)


@dataclass(frozen=True)
class TemporalDecoderConfig:
    """``channels[i]`` is the width of up level i (level 0 at full resolution, run last)."""

    z_channels: int
    channels: tuple[int, ...]
    res_blocks: int  # the decoder runs res_blocks + 1 ResnetBlocks per level
    out_channels: int
    time_kernel: tuple[int, int, int]  # kernel of the temporal convs, (frames, h, w)


# --- reading configs from weights -------------------------------------------------------------


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, who: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"{who}: key {key!r} is missing")
    return tuple(state_dict[key].shape)


def _indices(state_dict: Mapping[str, torch.Tensor], pattern: str, who: str) -> int:
    """How many consecutive indices ``pattern`` (a regex with one group) finds; refuses gaps."""
    found = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    if not found or found != set(range(len(found))):
        raise ValueError(f"{who}: indices {sorted(found)} for {pattern!r} are not 0..n-1 with n >= 1")
    return len(found)


def _refuse_attention_levels(state_dict: Mapping[str, torch.Tensor], level_key: str, who: str) -> None:
    extra = sorted(k for k in state_dict if re.match(rf"{level_key}\.\d+\.attn\.", k))
    if extra:
        raise ValueError(
            f"{who}: attention inside the resolution levels ({extra[0]!r}, ...) is not supported; "
            "SVD's autoencoder has attention only in its mid block"
        )


def encoder_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> VaeEncoderConfig:
    """Sizes of the conditioning encoder from its weights (keys with ``ENCODER_PREFIX`` stripped)."""
    who = "SVD VAE encoder"
    _refuse_attention_levels(state_dict, r"encoder\.down", who)
    levels = _indices(state_dict, r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight$", who)
    conv_in = _shape(state_dict, "encoder.conv_in.weight", who)
    conv_out = _shape(state_dict, "encoder.conv_out.weight", who)
    quant = _shape(state_dict, "quant_conv.weight", who)
    return VaeEncoderConfig(
        in_channels=conv_in[1],
        channels=tuple(
            _shape(state_dict, f"encoder.down.{i}.block.0.conv1.weight", who)[0] for i in range(levels)
        ),
        res_blocks=_indices(state_dict, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight$", who),
        z_channels=conv_out[0] // 2,
        embed_dim=quant[0] // 2,
    )


def decoder_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> TemporalDecoderConfig:
    """Sizes of the temporal decoder from its weights (keys with ``DECODER_PREFIX`` stripped)."""
    who = "SVD VAE decoder"
    _refuse_attention_levels(state_dict, r"up", who)
    levels = _indices(state_dict, r"up\.(\d+)\.block\.0\.conv1\.weight$", who)
    time_kernel = _shape(state_dict, "conv_out.time_mix_conv.weight", who)[2:]
    if len(time_kernel) != 3:
        raise ValueError(f"{who}: conv_out.time_mix_conv.weight is not a 3-D convolution")
    return TemporalDecoderConfig(
        z_channels=_shape(state_dict, "conv_in.weight", who)[1],
        channels=tuple(_shape(state_dict, f"up.{i}.block.0.conv1.weight", who)[0] for i in range(levels)),
        res_blocks=_indices(state_dict, r"up\.0\.block\.(\d+)\.conv1\.weight$", who) - 1,
        out_channels=_shape(state_dict, "conv_out.weight", who)[0],
        time_kernel=time_kernel,  # type: ignore[arg-type]
    )


# --- the conditioning encoder ------------------------------------------------------------------


class Encoder(nn.Module):
    """Image (n, in_channels, H, W) → 2·z channels at (H, W) / 2^(levels-1)."""

    def __init__(self, config: VaeEncoderConfig):
        super().__init__()
        widths = config.channels
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        c = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(config.res_blocks):
                blocks.append(ResnetBlock(c, width))
                c = width
            last = i == len(widths) - 1
            self.down.append(Level(blocks, None if last else Downsample(c), "downsample"))
        self.mid = MidBlock(ResnetBlock(c, c), c, ResnetBlock(c, c))
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VaeEncoder(nn.Module):
    """The conditioner's autoencoder without its decoder: ``encoder`` then ``quant_conv``."""

    def __init__(self, config: VaeEncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] (n, 3, H, W) → latent mean (n, embed_dim, H/8, W/8), not scaled."""
        moments = self.quant_conv(self.encoder(image.to(self.quant_conv.weight.dtype)))
        return moments[:, : self.config.embed_dim]

    forward = encode


# --- the temporal decoder ----------------------------------------------------------------------


class TemporalDecoder(nn.Module):
    """Latents (b·f, z, h, w), frames of one video consecutive → images (b·f, out, H, W) in about
    [-1, 1] (not clamped); H, W = 2^(levels-1) · h, w (8x for SVD)."""

    def __init__(self, config: TemporalDecoderConfig):
        super().__init__()
        self.config = config
        widths, kernel = config.channels, config.time_kernel
        c = widths[-1]
        self.conv_in = nn.Conv2d(config.z_channels, c, 3, padding=1)
        self.mid = MidBlock(VideoResBlock(c, c, kernel), c, VideoResBlock(c, c, kernel))
        levels: list[nn.Module] = []
        for i in reversed(range(len(widths))):  # lowest resolution first
            blocks = []
            for _ in range(config.res_blocks + 1):
                blocks.append(VideoResBlock(c, widths[i], kernel))
                c = widths[i]
            levels.insert(0, Level(blocks, Upsample(c) if i > 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(c)
        self.conv_out = TimeMixConv(c, config.out_channels, kernel)

    def _check(self, z: torch.Tensor, num_frames: int) -> None:
        if z.ndim != 4 or num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(
                f"SVD VAE decoder: latents of shape {tuple(z.shape)} do not hold whole videos of "
                f"num_frames={num_frames} frames; expected (videos·num_frames, {self.config.z_channels}, h, w)"
            )

    def forward(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Decode every ``num_frames`` consecutive latents as one video (all frames together)."""
        self._check(z, num_frames)
        h = self.conv_in(z.to(self.conv_in.weight.dtype))
        h = self.mid.block_1(h, num_frames)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, num_frames)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h, num_frames)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)), num_frames)

    def decode(self, z: torch.Tensor, num_frames: int, chunk_size: int = 0) -> torch.Tensor:
        """Decode videos of ``num_frames`` frames, at most ``chunk_size`` frames per call (0 = all).

        Chunking bounds memory but changes the result: each chunk is decoded as a video of its
        own, so the temporal layers (the (3, 1, 1) convs, which see zero padding at a chunk's first
        and last frame, and the temporal GroupNorms, whose statistics cover the chunk's frames)
        never look across a chunk boundary; every frame of a chunked decode may differ from the
        all-frames decode. A chunk of ``num_frames`` or more is exactly the unchunked decode. The
        reference (``decode_first_stage`` with ``en_and_decode_n_samples_a_time``) and diffusers'
        ``decode_chunk_size`` chunk the same way for one video; here chunks never span two videos,
        whereas diffusers chunks the flattened batch.
        """
        if chunk_size < 0:
            raise ValueError(
                f"SVD VAE decoder: chunk_size = {chunk_size} is not allowed; expected 0 (all frames) "
                "or a positive frame count"
            )
        self._check(z, num_frames)
        if chunk_size == 0 or chunk_size >= num_frames:
            return self(z, num_frames)
        out = []
        for video in z.split(num_frames):
            for chunk in video.split(chunk_size):
                out.append(self(chunk, chunk.shape[0]))
        return torch.cat(out)
