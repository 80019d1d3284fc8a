"""What an SVD job holds in memory: the settings that bound it, and the estimate shown before it runs.

Weights are counted from the loaded modules; activations are estimated per stage from the job's
frame count, size and chunking (the largest live tensors of each network, see the
``*_activation_bytes`` functions). ``pipeline.memory_plan`` puts them together for one job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .unet import SvdUNetConfig
from .vae import VAE_DOWNSCALE

GIB = 1024**3


@dataclass(frozen=True)
class SvdMemory:
    """Memory settings (the WebUI's Settings page): ``offload`` keeps each component on the CPU
    except while it runs (image encoder, VAE encoder, UNet, decoder, in that order); ``ff_chunk``
    splits every feed-forward of the UNet's transformers (spatial and temporal, which need the
    same wide intermediate) into chunks of that many rows (0 = no chunking)."""

    offload: bool = True
    ff_chunk: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """What a job will hold, in bytes, before it runs: weights per component and the largest
    activation estimate; ``describe()`` is the line the tab and the log show.

    ``activation_parts`` is the estimate per stage (VAE encoder, UNet, decoder; the image
    encoder, on one 224-pixel picture, is left out); ``activations`` is its largest entry."""

    weights: dict[str, int]
    activations: int
    device: str
    offload: bool
    activation_parts: dict[str, int] = field(default_factory=dict)

    def peak(self) -> int:
        """Bytes on the device at the worst moment: with offload (on an accelerator) one stage's
        weights plus its activations; otherwise every weight plus the largest activation."""
        if self.offload and self.device != "cpu" and self.activation_parts:
            return max(self.weights.get(stage, 0) + size for stage, size in self.activation_parts.items())
        return sum(self.weights.values()) + self.activations

    def describe(self) -> str:
        """One line in GiB: total and per-component weights, the largest activation and its
        stage, the peak."""
        parts = ", ".join(f"{name} {size / GIB:.2f}" for name, size in self.weights.items())
        worst = max(self.activation_parts, key=self.activation_parts.get, default="")
        where = f" ({worst})" if worst else ""
        offload = "on" if self.offload else "off"
        return (
            f"SVD memory on {self.device} (offload {offload}): weights {sum(self.weights.values()) / GIB:.2f} GiB "
            f"({parts}); largest activation {self.activations / GIB:.2f} GiB{where}; "
            f"peak about {self.peak() / GIB:.2f} GiB"
        )


def weight_bytes(module: nn.Module) -> int:
    """What the module's parameters and buffers occupy."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def unet_activation_bytes(
    config: SvdUNetConfig, frames: int, height: int, width: int, ff_chunk: int, item: int
) -> int:
    """Estimate of the UNet's largest live activations for one guided step (both halves: 2 x frames rows).

    The skip connections kept for the up path, plus the working set of the widest layer: a
    residual block holds about four feature maps; a transformer block its input, the attention
    output and the feed-forward's 8c-wide GEGLU projection for every token (or ``ff_chunk`` tokens
    at a time). Attention goes through ``scaled_dot_product_attention``, whose fused kernels do not
    keep the tokens x tokens score matrix, so it is not counted."""
    rows = 2 * frames
    h, w = height // VAE_DOWNSCALE, width // VAE_DOWNSCALE
    mc = config.model_channels
    widths = [mc * m for m in config.channel_mult]
    skips = rows * mc * h * w  # conv_in
    working = 0
    for level, channels in enumerate(widths):
        tokens = (h >> level) * (w >> level)
        stages = config.num_res_blocks + (1 if level < len(widths) - 1 else 0)
        skips += stages * rows * channels * tokens
        ff_tokens = rows * tokens if not ff_chunk else min(ff_chunk, rows * tokens)
        block = 4 * rows * channels * tokens
        if level in config.attention_levels:
            block = max(block, 3 * rows * channels * tokens + ff_tokens * 12 * channels)
        working = max(working, block)
    return (skips + working) * item


def decoder_activation_bytes(top_channels: int, frames: int, height: int, width: int, item: int) -> int:
    """The temporal decoder at full resolution: about five ``top_channels``-wide maps per frame of
    one decode call (the residual block's input, its two convolutions, the temporal branch and the
    mix), plus the decoded pixels."""
    return frames * (5 * top_channels + 3) * height * width * item


def encoder_activation_bytes(top_channels: int, height: int, width: int, item: int) -> int:
    """The VAE encoder on the one conditioning picture: about four full-resolution maps."""
    return 4 * top_channels * height * width * item
