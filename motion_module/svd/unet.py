"""The SVD spatio-temporal UNet (Stability's sgm ``VideoUNet`` as ``configs/inference/svd.yaml``
sets it up), its config read from a state dict, and the 768-wide "vector" conditioning.

Parameter names are the checkpoint's keys without ``PREFIX`` (``model.diffusion_model.``), so
``SvdUNet(config_from_state_dict(sd)).load_state_dict(sd, strict=True)`` loads an official file.
The sampler calls ``SvdUNet.forward`` once per denoising step. Imports nothing from the WebUI.

Shape vocabulary as in ``unet_blocks``: b videos, f frames, c channels, h/w latent size, d context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..ldm_layers import Downsample, GroupNorm32, Upsample, timestep_embedding
from .unet_blocks import ConditionedLayer, FrameConditioning, VideoResBlock
from .unet_transformer import SpatialVideoTransformer

PREFIX = "model.diffusion_model."
OFFICIAL_HEAD_DIM = 64  # sgm's num_head_channels for SVD; the weights' shapes do not tell it
TIME_ID_WIDTH = 256  # sgm's ConcatTimestepEmbedderND outdim for fps_id, motion_bucket_id, cond_aug


@dataclass(frozen=True)
class SvdUNetConfig:
    """The network's shape. Defaults are SVD / SVD-XT (both share one UNet shape).

    ``attention_levels`` are the levels (0 = full latent size) whose blocks carry a
    ``SpatialVideoTransformer``; the middle block always does. Every attention layer has
    ``width // head_dim`` heads."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_res_blocks: int = 2
    transformer_depth: int = 1
    head_dim: int = OFFICIAL_HEAD_DIM
    context_dim: int = 1024
    adm_in_channels: int = 3 * TIME_ID_WIDTH
    temporal_kernel: int = 3

    def __post_init__(self):
        def refuse(field: str, value, allowed: str):
            raise ValueError(f"SVD UNet config: {field} = {value!r} is not allowed; expected {allowed}")

        widths = [self.model_channels * m for m in self.channel_mult]
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            refuse("channel_mult", self.channel_mult, "one or more positive multipliers")
        if self.model_channels < 32 or any(w % 32 for w in widths):
            refuse(
                "model_channels", self.model_channels, "widths that are multiples of 32 (GroupNorm groups)"
            )
        if any(level not in range(len(widths)) for level in self.attention_levels):
            refuse("attention_levels", self.attention_levels, f"levels from 0 to {len(widths) - 1}")
        attention_widths = [widths[level] for level in self.attention_levels] + [widths[-1]]
        if self.head_dim < 1 or any(w % self.head_dim for w in attention_widths):
            refuse("head_dim", self.head_dim, f"a divisor of every attention width {attention_widths}")
        if self.temporal_kernel < 1 or self.temporal_kernel % 2 == 0:
            refuse("temporal_kernel", self.temporal_kernel, "an odd frame count (SVD: 3)")
        counts = ("in_channels", "out_channels", "num_res_blocks", "transformer_depth", "context_dim")
        for field in (*counts, "adm_in_channels"):
            if getattr(self, field) < 1:
                refuse(field, getattr(self, field), "a positive whole number")

    def heads(self, width: int) -> int:
        return width // self.head_dim


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(
            f"SVD UNet: key {key!r} is missing: not an SVD UNet, or the keys still carry the "
            f"{PREFIX!r} prefix (pass them without it)"
        )
    return tuple(state_dict[key].shape)


def config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], head_dim: int | None = None
) -> SvdUNetConfig:
    """Read the network's shape from its weights (keys without ``PREFIX``).

    Head counts leave no trace in the shapes: ``head_dim`` defaults to the official 64, or to
    ``model_channels`` when that is narrower (scaled-down test checkpoints: one head at level 0)."""
    model_channels, in_channels = _shape(state_dict, "input_blocks.0.0.weight")[:2]
    out_channels = _shape(state_dict, "out.2.weight")[0]
    adm_in_channels = _shape(state_dict, "label_emb.0.0.weight")[1]
    block_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downsamplers = sorted(i for i in block_ids if f"input_blocks.{i}.0.op.weight" in state_dict)
    per_level = downsamplers[0] if downsamplers else len(block_ids)  # res blocks + 1 (downsample or conv_in)
    levels = len(block_ids) // per_level
    first_blocks = [1 + level * per_level for level in range(levels)]
    channel_mult = tuple(
        _shape(state_dict, f"input_blocks.{i}.0.out_layers.3.weight")[0] // model_channels
        for i in first_blocks
    )
    attention_levels = tuple(
        level for level, i in enumerate(first_blocks) if f"input_blocks.{i}.1.norm.weight" in state_dict
    )
    mid = "middle_block.1."
    depth = len({k.split(".")[3] for k in state_dict if k.startswith(mid + "transformer_blocks.")})
    return SvdUNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=channel_mult,
        attention_levels=attention_levels,
        num_res_blocks=per_level - 1,
        transformer_depth=depth,
        head_dim=head_dim or min(OFFICIAL_HEAD_DIM, model_channels),
        context_dim=_shape(state_dict, mid + "transformer_blocks.0.attn2.to_k.weight")[1],
        adm_in_channels=adm_in_channels,
        temporal_kernel=_shape(state_dict, "input_blocks.1.0.time_stack.in_layers.2.weight")[2],
    )


class Stage(nn.ModuleList):
    """One entry of ``input_blocks`` / ``middle_block`` / ``output_blocks``: layers run in order,
    the spatio-temporal ones given the conditioning (sgm's ``TimestepEmbedSequential``)."""

    def forward(
        self, h: torch.Tensor, cond: FrameConditioning, upsample_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ConditionedLayer):
                h = layer(h, cond)
            elif isinstance(layer, Upsample):
                h = layer(h, upsample_size)
            else:
                h = layer(h)
        return h


class SvdUNet(nn.Module):
    """sgm's ``VideoUNet`` for SVD: VideoResBlocks and SpatialVideoTransformers in an SD-style
    UNet, conditioned on the noise level, the 768-wide vector ``y`` (``label_emb``) and the CLIP
    image embedding.

    Memory: ``set_ff_chunk(rows)`` makes every feed-forward of the transformers (per-frame and
    temporal) run on at most ``rows`` tokens at a time; 0 turns it off."""

    def __init__(self, config: SvdUNetConfig):
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, 4 * config.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        )

        def res_block(channels: int, out: int) -> VideoResBlock:
            return VideoResBlock(channels, emb_dim, out, config.temporal_kernel)

        def transformer(width: int) -> SpatialVideoTransformer:
            return SpatialVideoTransformer(
                width, config.heads(width), config.head_dim, config.transformer_depth, config.context_dim
            )

        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(config.in_channels, mc, 3, padding=1)])])
        skip_widths, ch = [mc], mc
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mc * mult)]
                ch = mc * mult
                if level in config.attention_levels:
                    layers.append(transformer(ch))
                self.input_blocks.append(Stage(layers))
                skip_widths.append(ch)
            if level != last_level:
                self.input_blocks.append(Stage([Downsample(ch)]))
                skip_widths.append(ch)

        self.middle_block = Stage([res_block(ch, ch), transformer(ch), res_block(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res_block(ch + skip_widths.pop(), mc * config.channel_mult[level])]
                ch = mc * config.channel_mult[level]
                if level in config.attention_levels:
                    layers.append(transformer(ch))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Stage(layers))

        self.out = nn.Sequential(GroupNorm32(mc), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, padding=1))

    def set_ff_chunk(self, rows: int) -> None:
        """Run every transformer feed-forward on at most ``rows`` tokens at a time (0 = all at once);
        outputs equal the unchunked ones up to float rounding. ``SvdMemory.ff_chunk`` is this value."""
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(
                f"SVD UNet: ff_chunk = {rows!r} is not allowed; expected 0 (off) or a positive row count"
            )
        for module in self.modules():
            if hasattr(module, "chunk_rows"):
                module.chunk_rows = rows

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor,
        num_frames: int,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[(b f), in_channels, h, w]`` (noisy latents concatenated with the conditioning
        latent); ``timesteps`` ``[(b f)]``: the preconditioned noise level sgm passes (for SVD
        ``c_noise = 0.25 * ln(sigma)``), embedded as it is; ``context`` ``[(b f), 1, d]``;
        ``y`` ``[(b f), adm_in_channels]`` (``time_ids_vector``); ``image_only_indicator``
        ``[b, f]``, default zeros (all rows are video frames). Returns ``[(b f), out_channels, h, w]``."""
        rows = x.shape[0]
        self._check_inputs(x, timesteps, context, y, num_frames, image_only_indicator)
        if image_only_indicator is None:
            image_only_indicator = x.new_zeros(rows // num_frames, num_frames)
        dtype = self.time_embed[0].weight.dtype
        t_emb = timestep_embedding(timesteps.reshape(-1).expand(rows), self.config.model_channels)
        emb = self.time_embed(t_emb.to(dtype)) + self.label_emb(y.to(dtype))  # [(b f), 4 mc]
        cond = FrameConditioning(emb, context.to(dtype), num_frames, image_only_indicator)

        h, skips = x.to(dtype), []
        for stage in self.input_blocks:
            h = stage(h, cond)
            skips.append(h)
        h = self.middle_block(h, cond)
        for stage in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = stage(h, cond, skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(x.dtype)

    def _check_inputs(self, x, timesteps, context, y, num_frames, image_only_indicator) -> None:
        def refuse(field: str, value, allowed: str):
            raise ValueError(f"SVD UNet: {field} = {value} is not allowed; expected {allowed}")

        rows, cfg = x.shape[0], self.config
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            refuse("num_frames", repr(num_frames), "a positive whole number")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or rows % num_frames:
            refuse("x.shape", tuple(x.shape), f"[videos*{num_frames}, {cfg.in_channels}, h, w]")
        if timesteps.numel() not in (1, rows):
            refuse("timesteps.shape", tuple(timesteps.shape), f"[{rows}] or a single value")
        if context.ndim != 3 or context.shape[0] != rows or context.shape[2] != cfg.context_dim:
            refuse("context.shape", tuple(context.shape), f"[{rows}, tokens, {cfg.context_dim}]")
        if tuple(y.shape) != (rows, cfg.adm_in_channels):
            refuse("y.shape", tuple(y.shape), f"[{rows}, {cfg.adm_in_channels}]")
        videos = rows // num_frames
        if image_only_indicator is not None and tuple(image_only_indicator.shape) != (videos, num_frames):
            refuse(
                "image_only_indicator.shape", tuple(image_only_indicator.shape), f"[{videos}, {num_frames}]"
            )


def time_ids_vector(
    fps_id: float,
    motion_bucket_id: float,
    cond_aug: float,
    batch: int,
    *,
    width: int = TIME_ID_WIDTH,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The UNet's ``y``: ``[batch, 3*width]`` float32, the sinusoidal embeddings (cosines first) of
    ``fps_id``, ``motion_bucket_id`` and ``cond_aug`` side by side, as sgm's conditioner builds the
    "vector" from three ``ConcatTimestepEmbedderND(256)`` in that order (diffusers: ``add_time_proj``
    of ``added_time_ids``). ``fps_id`` is the frame rate minus one, ``cond_aug`` the noise added to
    the conditioning image. Repeat the rows per frame for ``forward`` (``y`` has one row per frame)."""
    values = torch.tensor([fps_id, motion_bucket_id, cond_aug], dtype=torch.float32, device=device)
    row = timestep_embedding(values, width).reshape(1, 3 * width)  # [3, width] -> [1, 3 width]
    return row.expand(batch, -1).clone()
