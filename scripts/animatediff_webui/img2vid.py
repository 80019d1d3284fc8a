"""Host seam for img2vid on the img2img tab: per-frame starting latents from the init image, an
optional last image and noise drawn from the WebUI's per-frame seeds.

The weights and the blend live in ``motion_module.latents``; ``p.init_latent`` is replaced through
``host_changes``. WebUI modules are imported inside functions only.

Runs in ``before_process_batch`` on the img2img tab (not the Batch tab): ``p.init`` has already
VAE-encoded the init image into ``p.init_latent`` (once per job, reused by every batch) and the
per-batch ``p.seeds`` are set, and the sampler reads ``p.init_latent`` later in ``p.sample``.
Rebinding the attribute there is enough. The encoded images are kept in the job
(``StartLatents``), so every batch (video) blends from the real image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from motion_module.camera_moves import camera_frames
from motion_module.latents import blend_latents, blend_weights
from motion_module.params import ExtrasParams, Img2VidParams

from . import host_changes
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

NoiseFn = Callable[[Any, tuple[int, ...]], torch.Tensor]  # (p, (c, h, w)) -> (f, c, h, w)
EncodeFn = Callable[[Any, Any], torch.Tensor]  # (p, PIL image) -> (1, c, h, w)


@dataclass(frozen=True)
class StartLatents:
    """The WebUI's encoded init image(s) (f, c, h, w) and the encoded last image (1, c, h, w)."""

    first: torch.Tensor
    last: torch.Tensor | None
    moved: torch.Tensor | None = None  # a camera move: the init image per frame (f, c, h, w)


def blend_init_latent(
    p: Any,
    session: PatchSession,
    params: Img2VidParams,
    start: StartLatents | None = None,
    last_image: Any = None,
    *,
    camera: ExtrasParams | None = None,
    noise_fn: NoiseFn | None = None,
    encode_fn: EncodeFn | None = None,
) -> StartLatents | None:
    """Replace ``p.init_latent`` by this batch's blended per-frame latents.

    ``start`` is what the first batch returned (None for the first batch); ``last_image`` (a PIL
    image) is encoded only then. Returns None, and
    changes nothing, when several init images were given: then every frame already has its own
    image (video-to-video), and blending them toward the first would discard them.
    """
    if len(getattr(p, "init_images", None) or []) > 1:
        log.info(
            "AnimateDiff img2vid: %d init images (one per frame), latent blending skipped", len(p.init_images)
        )
        return None
    noise_fn = noise_fn or seeded_noise
    encode_fn = encode_fn or encode_image
    if start is None:
        moved = _camera_latents(p, camera, encode_fn) if camera is not None and camera.camera else None
        last = None if last_image is None else encode_fn(p, last_image)
        start = StartLatents(p.init_latent, last, moved)
    first, last = start.first, start.last
    frames = first.shape[0]
    noise = noise_fn(p, tuple(first.shape[1:]))
    if noise.shape[0] != frames:
        raise RuntimeError(
            f"img2vid: {noise.shape[0]} noise frames for {frames} init latents (p.seeds: {p.seeds})"
        )
    weights = blend_weights(frames, params, has_last=last is not None)
    keep = _keep_mask(p, frames)
    image_latents = start.moved if start.moved is not None else first[:1]
    blended = blend_latents(image_latents, noise, weights, last=last, keep_mask=keep)
    host_changes.img2vid_latents(session, p, blended.to(first.device, first.dtype))
    log.debug("AnimateDiff img2vid: first-image weights %s", [round(w, 3) for w in weights.first])
    return start


def _camera_latents(p: Any, camera: ExtrasParams, encode_fn: EncodeFn) -> torch.Tensor:
    """The init image moved by the camera for every frame (cumulative), each VAE-encoded."""
    frames = p.init_latent.shape[0]
    images = camera_frames(
        p.init_images[0],
        frames,
        zoom=camera.zoom,
        angle=camera.angle,
        translate_x=camera.translate_x,
        translate_y=camera.translate_y,
        border=camera.camera_border.value,
    )
    log.info("AnimateDiff img2vid: a camera move over %d frames", frames)
    return torch.cat([encode_fn(p, image) for image in images])


def _keep_mask(p: Any, frames: int) -> torch.Tensor | None:
    """The WebUI's inpaint mask (1 = keep): (c, h, w) for one mask, or (f, c, h, w) per frame."""
    mask = getattr(p, "mask", None)
    if mask is None:
        return None
    if mask.dim() == 4 and mask.shape[0] not in (1, frames):
        raise RuntimeError(
            f"img2vid: {mask.shape[0]} inpaint masks for {frames} frames; give one mask or one per frame"
        )
    return mask


def seeded_noise(p: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """One fresh latent per frame from the WebUI's per-frame seeds: the second draw of the same
    ``ImageRNG`` the WebUI builds for the batch. The first draw is the sampling noise, so it stays
    independent of ours and ``p.rng`` is not advanced; the infotext's seed reproduces both."""
    from modules import rng  # WebUI, only at run time

    generator = rng.ImageRNG(
        shape,
        p.seeds,
        subseeds=p.subseeds,
        subseed_strength=p.subseed_strength,
        seed_resize_from_h=p.seed_resize_from_h,
        seed_resize_from_w=p.seed_resize_from_w,
    )
    generator.next()
    return generator.next()


def encode_image(p: Any, image: Any) -> torch.Tensor:
    """VAE-encode the last-frame image exactly as ``p.init`` treats the init image: flatten on the
    background colour, resize with ``p.resize_mode`` (mode 3 "latent upscale" encodes at native
    size and resizes the latent), crop like "inpaint only masked", VAE method from the settings."""
    import numpy as np
    from modules import devices, images, shared
    from modules.sd_samplers_common import approximation_indexes, images_tensor_to_samples

    img = images.flatten(image, shared.opts.img2img_background_color)
    paste_to = getattr(p, "paste_to", None)
    if getattr(p, "inpaint_full_res", False) and paste_to:  # crop box is in init-image pixels
        x, y, w, h = paste_to
        size = p.init_images[0].size
        img = img if img.size == size else images.resize_image(p.resize_mode, img, *size)
        img = images.resize_image(2, img.crop((x, y, x + w, y + h)), p.width, p.height)
    elif p.resize_mode != 3:
        img = images.resize_image(p.resize_mode, img, p.width, p.height)
    array = np.moveaxis(np.array(img.convert("RGB")).astype(np.float32) / 255.0, 2, 0)
    tensor = torch.from_numpy(array[None]).to(shared.device, dtype=devices.dtype_vae)
    latent = images_tensor_to_samples(
        tensor, approximation_indexes.get(shared.opts.sd_vae_encode_method), p.sd_model
    )
    if p.resize_mode == 3:
        latent = torch.nn.functional.interpolate(latent, size=(p.height // 8, p.width // 8), mode="bilinear")
    return latent
