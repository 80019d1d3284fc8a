"""Tiny random SVD checkpoints in the official single-file layout, for tests and benchmarks.

Every network is the engine's own module built with a small configuration; its state dict is saved
under the official sgm prefix. The file also carries what the official files hold and the engine
does not load: the text remnants of the OpenCLIP model, the first stage's own encoder, and the
conditioner autoencoder's 2-D decoder and ``post_quant_conv``. Imports torch, safetensors and the
engine only, so the real-host tier can call it from the WebUI's interpreter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from motion_module.svd import image_encoder, unet, vae

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
TEXT_WIDTH = 16  # the OpenCLIP text remnants' width (never loaded)
VARIANTS = ("svd", "svd_xt")


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = _randomized(vae.TemporalDecoder(TINY_DECODER))
        state = {
            **_prefixed(image_encoder.PREFIX, _randomized(image_encoder.ImageEncoder(TINY_IMAGE_ENCODER))),
            **_prefixed(vae.ENCODER_PREFIX, _randomized(vae.VaeEncoder(TINY_VAE_ENCODER))),
            **_prefixed(unet.PREFIX, _randomized(unet.SvdUNet(unet_config))),
            **_prefixed(vae.DECODER_PREFIX, decoder),
            # accepted and ignored: the first stage's own encoder and the conditioner's 2-D decoder
            **_prefixed("first_stage_model.encoder.", vae.VaeEncoder(TINY_VAE_ENCODER).encoder),
            **{
                vae.ENCODER_PREFIX + "decoder." + key: value.clone()
                for key, value in decoder.state_dict().items()
                if not _is_temporal(key)
            },
            vae.ENCODER_PREFIX + "post_quant_conv.weight": torch.randn(4, 4, 1, 1),
            vae.ENCODER_PREFIX + "post_quant_conv.bias": torch.randn(4),
            **_text_remnants(),
        }
    return state


def _text_remnants() -> dict[str, torch.Tensor]:
    width = TEXT_WIDTH
    shapes = {
        "positional_embedding": (77, width),
        "text_projection": (width, TINY_CONTEXT),
        "logit_scale": (),
        "token_embedding.weight": (64, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
    }
    return {image_encoder.OPEN_CLIP_PREFIX + name: torch.randn(shape) for name, shape in shapes.items()}


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
