"""Random SVD checkpoints in the official single-file layout, for tests and benchmarks.

Every network is the engine's own module built with a configuration (``SvdShapes``: ``TINY``, or
``OFFICIAL``, the real SVD / SVD-XT sizes); its state dict is saved under the official sgm prefix.
The file also carries what the official files hold and the engine does not load: the text
remnants of the OpenCLIP model, the first stage's own encoder, and the conditioner autoencoder's
2-D decoder and ``post_quant_conv``. ``write_tiny_svd`` builds the tiny networks in memory;
``write_random_svd`` writes any size tensor by tensor (the full-size file is 4.6 GB in 16 bits),
holding one tensor at a time. Imports torch, safetensors and the engine only, so the real-host
tier can call it from the WebUI's interpreter.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from motion_module.svd import image_encoder, unet, vae
from motion_module.svd.checkpoint import HEADER_DTYPES

# Small but complete: every level kind the real networks have (the VAE keeps its 4 levels so
# latents stay 8 times smaller than pixels). The image encoder keeps SVD's 224-pixel input (the
# preprocessing and diffusers' pipeline resize to 224) with a coarse 32-pixel patch.
TINY_CONTEXT = 32
TINY_UNET = unet.SvdUNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    attention_levels=(0, 1),
    num_res_blocks=1,
    transformer_depth=1,
    head_dim=32,
    context_dim=TINY_CONTEXT,
)
TINY_IMAGE_ENCODER = image_encoder.ImageEncoderConfig(
    width=80, layers=1, heads=1, mlp_width=160, patch_size=32, image_size=224, output_dim=TINY_CONTEXT
)
TINY_VAE_CHANNELS = (32, 32, 32, 32)
TINY_VAE_ENCODER = vae.VaeEncoderConfig(
    in_channels=3, channels=TINY_VAE_CHANNELS, res_blocks=2, z_channels=4, embed_dim=4
)
TINY_DECODER = vae.TemporalDecoderConfig(
    z_channels=4, channels=TINY_VAE_CHANNELS, res_blocks=2, out_channels=3, time_kernel=(3, 1, 1)
)
VARIANTS = ("svd", "svd_xt")


@dataclass(frozen=True)
class SvdShapes:
    """The four networks' configurations and the size of the OpenCLIP text remnants (never loaded)."""

    image_encoder: image_encoder.ImageEncoderConfig
    vae_encoder: vae.VaeEncoderConfig
    unet: unet.SvdUNetConfig
    decoder: vae.TemporalDecoderConfig
    text_width: int
    text_tokens: int  # rows of the token embedding (the vocabulary)


TINY = SvdShapes(TINY_IMAGE_ENCODER, TINY_VAE_ENCODER, TINY_UNET, TINY_DECODER, text_width=16, text_tokens=64)
OFFICIAL_VAE_CHANNELS = (128, 256, 512, 512)
# The official SVD / SVD-XT shapes (both models share them): OpenCLIP ViT-H/14, the SD 2.x VAE
# with the temporal decoder, the 320-wide video UNet; the text side of OpenCLIP ViT-H.
OFFICIAL = SvdShapes(
    image_encoder.ImageEncoderConfig(
        width=1280, layers=32, heads=16, mlp_width=5120, patch_size=14, image_size=224, output_dim=1024
    ),
    vae.VaeEncoderConfig(3, OFFICIAL_VAE_CHANNELS, res_blocks=2, z_channels=4, embed_dim=4),
    unet.SvdUNetConfig(),
    vae.TemporalDecoderConfig(4, OFFICIAL_VAE_CHANNELS, res_blocks=2, out_channels=3, time_kernel=(3, 1, 1)),
    text_width=1024,
    text_tokens=49408,
)


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + key: value.detach().clone().contiguous() for key, value in module.state_dict().items()}


def _randomized(module: torch.nn.Module) -> torch.nn.Module:
    """Default initialisation leaves norms at 1, biases at 0 and mix factors at one constant, values
    that hide a swapped or skipped parameter; move every one of them off by a random amount."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("mix_factor"):
                param.add_(torch.randn_like(param))
            elif param.ndim <= 1:
                param.add_(0.1 * torch.randn_like(param))
    return module


def _is_temporal(key: str) -> bool:
    return ".time_stack." in key or "mix_factor" in key or "time_mix_conv" in key


def tiny_svd_state_dict(
    seed: int = 0, *, unet_config: unet.SvdUNetConfig = TINY_UNET
) -> dict[str, torch.Tensor]:
    """The whole official-layout state dict, random weights drawn from ``seed``."""
    return svd_state_dict(seed, replace(TINY, unet=unet_config))


def svd_state_dict(seed: int, shapes: SvdShapes) -> dict[str, torch.Tensor]:
    """The official-layout state dict of ``shapes``, random weights drawn from ``seed``; under
    ``torch.device("meta")`` only the names, shapes and dtypes (nothing allocated)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = _randomized(vae.TemporalDecoder(shapes.decoder))
        embed = shapes.vae_encoder.embed_dim
        state = {
            **_prefixed(image_encoder.PREFIX, _randomized(image_encoder.ImageEncoder(shapes.image_encoder))),
            **_prefixed(vae.ENCODER_PREFIX, _randomized(vae.VaeEncoder(shapes.vae_encoder))),
            **_prefixed(unet.PREFIX, _randomized(unet.SvdUNet(shapes.unet))),
            **_prefixed(vae.DECODER_PREFIX, decoder),
            # accepted and ignored: the first stage's own encoder and the conditioner's 2-D decoder
            **_prefixed("first_stage_model.encoder.", vae.VaeEncoder(shapes.vae_encoder).encoder),
            **{
                vae.ENCODER_PREFIX + "decoder." + key: value.clone()
                for key, value in decoder.state_dict().items()
                if not _is_temporal(key)
            },
            vae.ENCODER_PREFIX + "post_quant_conv.weight": torch.randn(embed, embed, 1, 1),
            vae.ENCODER_PREFIX + "post_quant_conv.bias": torch.randn(embed),
            **_text_remnants(shapes),
        }
    return state


def _text_remnants(shapes: SvdShapes) -> dict[str, torch.Tensor]:
    width = shapes.text_width
    sizes = {
        "positional_embedding": (77, width),
        "text_projection": (width, shapes.image_encoder.output_dim),
        "logit_scale": (),
        "token_embedding.weight": (shapes.text_tokens, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
    }
    return {image_encoder.OPEN_CLIP_PREFIX + name: torch.randn(size) for name, size in sizes.items()}


def write_tiny_svd(
    path: str | Path,
    variant: str = "svd",
    fmt: str = "safetensors",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny random SVD checkpoint and return its path.

    ``path`` is the file, or a folder to write ``<variant>.<fmt>`` into (the variant only names
    the file: SVD and SVD-XT share the layout, and the loader reads 14 or 25 frames from the name).
    ``fmt`` "ckpt" pickles ``{"state_dict": ...}`` as training checkpoints do."""
    if variant not in VARIANTS:
        raise ValueError(f"write_tiny_svd: variant = {variant!r}; expected one of {VARIANTS}")
    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"write_tiny_svd: fmt = {fmt!r}; expected 'safetensors' or 'ckpt'")
    path = Path(path)
    if path.is_dir():
        path = path / f"{variant}.{fmt}"
    state = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in tiny_svd_state_dict(seed).items()
    }
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, str(path))
    return path


# --- any size, tensor by tensor ----------------------------------------------------------------

DTYPE_NAMES = {dtype: name for name, dtype in HEADER_DTYPES.items()}


def random_tensor(key: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Random float32 values of a sensible size for the tensor named ``key``: weight matrices and
    kernels scaled by 1/sqrt(fan-in), 1-D weights (norms) around 1, biases and other vectors
    small, mix factors around 0 (as ``_randomized`` leaves them)."""
    values = torch.randn(shape, generator=generator)
    if key.endswith("mix_factor"):
        return values
    if len(shape) >= 2:
        return values / math.sqrt(math.prod(shape[1:]))
    if key.endswith(".weight"):
        return 1.0 + 0.1 * values
    return 0.1 * values


def write_random_svd(
    path: str | Path,
    shapes: SvdShapes = OFFICIAL,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Path:
    """Write a random official-layout checkpoint of ``shapes`` to ``path`` (a .safetensors file),
    one tensor at a time: the layout comes from the networks built on the meta device, the header
    is written first, then each tensor is drawn (``random_tensor``), converted to ``dtype`` and
    appended, so memory holds one tensor, not the file. Written to ``<path>.partial`` and renamed
    when complete, so an interrupted write never leaves a file that looks finished."""
    path = Path(path)
    with torch.device("meta"):
        layout = svd_state_dict(seed, shapes)
    header, offset = {}, 0
    for key, tensor in layout.items():
        size = tensor.numel() * torch.empty((), dtype=dtype).element_size()
        header[key] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    generator = torch.Generator().manual_seed(seed)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for key, tensor in layout.items():
            values = random_tensor(key, tensor.shape, generator).to(dtype).reshape(-1)
            out.write(values.view(torch.uint8).numpy().tobytes())
    os.replace(partial, path)
    return path
