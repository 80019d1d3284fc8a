"""From one image to SVD frames: load a checkpoint, plan memory, sample, decode.

The adapter (the SVD tab and ``POST /animatediff/v1/svd``) calls only the names in ``__all__``.

A job follows Stability's reference sampling for SVD (and diffusers' ``StableVideoDiffusionPipeline``,
which reproduces it):

1. the picture is scaled to cover ``width`` x ``height``, centre-cropped, and mapped to [-1, 1];
2. the CLIP image embedding of that picture is the cross-attention context (one token);
3. the VAE encodes the picture plus ``noise_aug_strength`` x Gaussian noise; the mode of the
   posterior, unscaled, is concatenated to every frame's noisy latent (4 + 4 = 8 UNet channels);
4. the unconditional half of classifier-free guidance gets zeros for both the embedding and the
   conditioning latent; the "vector" conditioning (fps - 1, motion_bucket_id, noise_aug_strength)
   is the same for both halves;
5. Euler sampling over the EDM schedule with a guidance scale rising per frame (``sampling``);
6. the latents divided by the VAE scale factor 0.18215 are decoded ``decode_chunk`` frames per
   call (the temporal decoder mixes the frames inside one call), clamped, and rounded to 8 bits.

Interrupting: ``should_stop`` is asked before each step and before each of the UNet's blocks. At
full size one step takes minutes on a CPU, so a stop in the middle of a step abandons that step;
the frames are then decoded from the last finished step, exactly as for a stop between steps.

Randomness: one CPU generator seeded with the job's seed draws the conditioning-image noise first
and the starting latents second (the order of the reference script and of diffusers), so a seed
starts from the same noise on any device.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from .checkpoint import SvdCheckpointError, default_frames_for, load_components, svd_components
from .image_encoder import embed_image
from .memory import (
    MemoryPlan,
    SvdMemory,
    decoder_activation_bytes,
    encoder_activation_bytes,
    unet_activation_bytes,
    weight_bytes,
)
from .params import SvdParams
from .sampling import StepAbandoned, guidance_ramp, sample_euler, sigma_schedule
from .unet import time_ids_vector
from .vae import LATENT_CHANNELS, LATENT_SCALE, VAE_DOWNSCALE

__all__ = [
    "MemoryPlan",
    "SvdCheckpointError",
    "SvdInterrupted",
    "SvdMemory",
    "SvdModel",
    "SvdResult",
    "generate",
    "load_svd",
    "load_svd_shapes",
    "memory_plan",
]


DEFAULT_MEMORY = SvdMemory()
STAGES = ("encoding", "sampling", "decoding")  # what ``on_stage`` names, in order


class SvdInterrupted(Exception):
    """Raised by ``generate`` when ``should_stop`` said so before the first step finished."""


@dataclass
class SvdModel:
    """The loaded networks (on the CPU until a job moves them) and what the file says of itself."""

    name: str
    default_frames: int  # 14 for SVD, 25 for SVD-XT (from the file name; the weights cannot tell)
    components: dict[str, torch.nn.Module] = field(repr=False)
    dtype: torch.dtype = torch.float32


@dataclass
class SvdResult:
    """A job's frames, the seed it used (the one picked for -1) and how far sampling got."""

    frames: list[Image.Image]
    seed: int
    steps_done: int
    interrupted: bool = False


def load_svd(path: str | Path, *, dtype: torch.dtype = torch.float32) -> SvdModel:
    """Load ``svd.safetensors`` / ``svd_xt*.safetensors`` (or a ``.ckpt`` through weights-only
    unpickling) strictly; raises ``SvdCheckpointError`` for anything else."""
    return _model(Path(path), dtype, shapes_only=False)


def load_svd_shapes(path: str | Path, *, dtype: torch.dtype = torch.float32) -> SvdModel | None:
    """The model of a ``.safetensors`` file with its networks on the meta device, built and checked
    from the file's header alone (names, shapes, dtypes; no weight is read): what ``memory_plan``
    needs before the weights are loaded, and its plan is the loaded model's, byte for byte. None
    for a ``.ckpt``, whose shapes come only with unpickling all of it (plan it after ``load_svd``).
    Raises ``SvdCheckpointError`` as ``load_svd`` does."""
    path = Path(path)
    if path.suffix.lower() == ".ckpt":
        return None
    return _model(path, dtype, shapes_only=True)


def _model(path: Path, dtype: torch.dtype, *, shapes_only: bool) -> SvdModel:
    components = load_components(path, svd_components(), dtype=dtype, shapes_only=shapes_only)
    return SvdModel(
        name=path.name, default_frames=default_frames_for(path.name), components=components, dtype=dtype
    )


# --- memory ------------------------------------------------------------------------------------


def memory_plan(model: SvdModel, params: SvdParams, memory: SvdMemory, device: torch.device) -> MemoryPlan:
    """Weights per component from their parameters, activations estimated from the job's frames,
    size and chunking (see the ``*_activation_bytes`` estimates)."""
    frames = params.frames or model.default_frames
    item = torch.empty((), dtype=model.dtype).element_size()
    parts = model.components
    chunk = params.decode_chunk or frames
    activations = {
        "unet": unet_activation_bytes(
            parts["unet"].config, frames, params.height, params.width, memory.ff_chunk, item
        ),
        "decoder": decoder_activation_bytes(
            parts["decoder"].config.channels[0], min(chunk, frames), params.height, params.width, item
        ),
        "vae_encoder": encoder_activation_bytes(
            parts["vae_encoder"].config.channels[0], params.height, params.width, item
        ),
    }
    return MemoryPlan(
        weights={name: weight_bytes(module) for name, module in parts.items()},
        activations=max(activations.values()),
        device=torch.device(device).type,
        offload=memory.offload,
        activation_parts=activations,
    )


# --- one job -----------------------------------------------------------------------------------


def prepare_image(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """``[1, 3, height, width]`` float32 in [-1, 1]: scaled (Lanczos) to cover the frame, then
    centre-cropped, so the picture is never stretched. A picture already at the size is untouched."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # [h, w, 3]
    return pixels.permute(2, 0, 1)[None] * 2.0 - 1.0


def to_pil(frames: torch.Tensor) -> list[Image.Image]:
    """``[f, 3, h, w]`` in [-1, 1] -> 8-bit pictures (clamped, rounded to the nearest level)."""
    pixels = ((frames.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in pixels.cpu()]


def pick_seed(seed: int) -> int:
    """``seed``, or for -1 one drawn from the OS (not from torch's global generator)."""
    return seed if seed >= 0 else random.SystemRandom().randrange(2**32)


@contextmanager
def stopping_between_blocks(unet: nn.Module, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """``should_stop()`` asked before each of the UNet's blocks while the block runs; when it says
    so the step is abandoned (``StepAbandoned``, which sampling takes as a stop)."""
    if should_stop is None:
        yield
        return

    def check(_block: nn.Module, _inputs: tuple) -> None:
        if should_stop():
            raise StepAbandoned("SVD: stopped inside a sampling step")

    blocks = (*unet.input_blocks, unet.middle_block, *unet.output_blocks)
    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def running(module: nn.Module, device: torch.device, offload: bool) -> Iterator[nn.Module]:
    """``module`` on ``device`` for the block; back on the CPU afterwards when offloading."""
    module.to(device)
    try:
        yield module
    finally:
        if offload:
            module.to("cpu")


def guided_unet(
    unet: nn.Module,
    concat: torch.Tensor,
    context: torch.Tensor,
    vector: torch.Tensor,
    frames: int,
    dtype: torch.dtype,
) -> Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]:
    """The UNet as ``sampling`` calls it: one batch of 2 x frames rows (unconditional first), each
    row's noisy latent followed by its conditioning latent; returns the two halves in float32."""

    def network(scaled: torch.Tensor, c_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([torch.cat([scaled, scaled]).to(dtype), concat], dim=1)  # [2f, 8, h, w]
        timesteps = torch.full((x.shape[0],), c_noise, device=x.device, dtype=torch.float32)
        out = unet(x, timesteps, context, vector, num_frames=frames).float()
        return out[:frames], out[frames:]

    return network


def generate(
    model: SvdModel,
    image: Image.Image,
    params: SvdParams,
    *,
    device: torch.device,
    memory: SvdMemory = DEFAULT_MEMORY,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> SvdResult:
    """Sample ``params.frames or model.default_frames`` frames at ``params.width`` x
    ``params.height`` from ``image`` (resized to fit). ``on_stage(name)`` as each of ``STAGES``
    begins; ``on_step(done, total)`` after each step; ``should_stop()`` before each step and each
    UNet block: when it says so, sampling stops (an unfinished step is abandoned) and the last
    finished step's denoised estimate is decoded (``interrupted=True``), or ``SvdInterrupted`` if
    no step finished. ``params.seed`` -1 picks a seed, reported in the result."""
    stage = on_stage or (lambda _name: None)
    device = torch.device(device)
    parts, dtype = model.components, model.dtype
    frames = params.frames or model.default_frames
    height, width = params.height, params.width
    seed = pick_seed(params.seed)
    generator = torch.Generator("cpu").manual_seed(seed)
    pixels = prepare_image(image, width, height)
    image_noise = torch.randn(pixels.shape, generator=generator)
    latent_shape = (frames, LATENT_CHANNELS, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE)
    noise = torch.randn(latent_shape, generator=generator).to(device)
    if not memory.offload:
        for module in parts.values():
            module.to(device)

    with torch.inference_mode():
        stage("encoding")
        with running(parts["image_encoder"], device, memory.offload) as encoder:
            embedding = embed_image(encoder, pixels.to(device, dtype))  # [1, d]
        with running(parts["vae_encoder"], device, memory.offload) as encoder:
            augmented = pixels + params.noise_aug_strength * image_noise
            latent = encoder.encode(augmented.to(device, dtype))  # [1, 4, h, w], the mode, unscaled

        context = torch.cat([torch.zeros_like(embedding), embedding])  # [2, d]: uncond, cond
        context = context.repeat_interleave(frames, dim=0)[:, None]  # [2f, 1, d]
        concat = torch.cat([torch.zeros_like(latent), latent]).repeat_interleave(
            frames, dim=0
        )  # [2f, 4, h, w]
        vector = time_ids_vector(
            params.fps - 1, params.motion_bucket_id, params.noise_aug_strength, 2 * frames
        )
        stage("sampling")
        with (
            running(parts["unet"], device, memory.offload) as unet,
            stopping_between_blocks(unet, should_stop),
        ):
            unet.set_ff_chunk(memory.ff_chunk)
            network = guided_unet(unet, concat, context, vector.to(device, dtype), frames, dtype)
            ramp = guidance_ramp(params.min_guidance, params.max_guidance, frames)
            outcome = sample_euler(
                network, noise, sigma_schedule(params.steps), ramp, on_step=on_step, should_stop=should_stop
            )
        if outcome.interrupted and outcome.steps_done == 0:
            raise SvdInterrupted("SVD: stopped before the first sampling step finished")

        stage("decoding")
        with running(parts["decoder"], device, memory.offload) as decoder:
            latents = (outcome.latents / LATENT_SCALE).to(dtype)
            pixels_out = decoder.decode(latents, num_frames=frames, chunk_size=params.decode_chunk)
    return SvdResult(
        frames=to_pil(pixels_out), seed=seed, steps_done=outcome.steps_done, interrupted=outcome.interrupted
    )
