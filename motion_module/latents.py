"""img2vid: per-frame starting latents blended from a first image, an optional last image and noise.

Owns the weight curves (a_i = max(0, 1 - i^power / scale), b_i its mirror from the last frame, as
the predecessor extension defined them; docs/behaviour.md) and the blend. Imports nothing from the
WebUI: the adapter (``scripts/animatediff_webui/img2vid.py``) passes the VAE latents, per-frame
noise from the WebUI's seeds and the inpaint mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .params import Img2VidParams


def decay_curve(frames: int, power: float, scale: float) -> list[float]:
    """max(0, 1 - i^power / scale) for i = 0..frames-1: how much of an image frame i keeps."""
    if power <= 0 or scale <= 0:
        raise ValueError(f"latent power and scale must be > 0, got power={power}, scale={scale}")
    return [max(0.0, 1.0 - (i**power) / scale) for i in range(frames)]


@dataclass(frozen=True)
class BlendWeights:
    """Per-frame shares of the first image, the last image and fresh noise (each row sums to 1)."""

    first: tuple[float, ...]
    last: tuple[float, ...]
    noise: tuple[float, ...]


def blend_weights(frames: int, params: Img2VidParams, has_last: bool) -> BlendWeights:
    """Weights of the first image, last image and noise for every frame.

    Without a last frame: first = a_i, noise = 1 - a_i (the predecessor's curve, unchanged).

    With a last frame, the predecessor divided a_i and b_i by their sum wherever a_i + b_i > 1.
    With the defaults (1, 32) and 16 frames that is every frame, so no frame kept any noise (the
    motion module had nothing to animate) and frame 0, forced back to the pure first image, jumped
    to a 63/37 mix at frame 1. Here instead:

    - noise share = 1 - max(a_i, b_i): each frame keeps as much noise as the *stronger* of the two
      images leaves. It is > 0 on every frame strictly between the ends (a_i < 1 for i > 0 and
      b_i < 1 for i < L-1), and equals the one-image curve wherever the curves do not overlap
      (so the predecessor's table for power 1, scale 8 at both ends is unchanged).
    - the image share max(a_i, b_i) is split in the ratio a_i(1 - b_i) : b_i(1 - a_i): each image
      counts where the other does not hold. At frame 0, a_0 = 1 makes the last image's part 0,
      so frame 0 is exactly the first image; at frame L-1, b = 1 pins the last image. Both pins
      come out of the formula, so the weights change smoothly from frame 0 to frame 1.
    A one-frame video with a last frame is the first image (the first image wins the tie).
    """
    a = decay_curve(frames, params.latent_power, params.latent_scale)
    if not has_last:
        return BlendWeights(tuple(a), (0.0,) * frames, tuple(1.0 - x for x in a))
    b = decay_curve(frames, params.latent_power_last, params.latent_scale_last)[::-1]
    first, last, noise = [], [], []
    for ai, bi in zip(a, b, strict=True):
        pull_first, pull_last = ai * (1.0 - bi), bi * (1.0 - ai)
        image = max(ai, bi)
        if pull_first + pull_last == 0.0:  # neither image holds (0, 0), or both fully (1, 1)
            w_first, w_last = (image, 0.0)
        else:
            w_first = image * pull_first / (pull_first + pull_last)
            w_last = image * pull_last / (pull_first + pull_last)
        first.append(w_first)
        last.append(w_last)
        noise.append(1.0 - w_first - w_last)
    return BlendWeights(tuple(first), tuple(last), tuple(noise))


def blend_latents(
    first: torch.Tensor,
    noise: torch.Tensor,
    weights: BlendWeights,
    last: torch.Tensor | None = None,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Starting latents z_i = w_first_i·E0 + w_last_i·E1 + w_noise_i·ε_i, shape (f, c, h, w).

    ``first``: one image latent, (c, h, w) or (1, c, h, w), or one per frame (f, c, h, w) (a camera
    move over the init image); ``last``: one image latent. ``noise``: (f, c, h, w), one
    fresh draw per frame. ``keep_mask`` (the WebUI's inpaint ``p.mask``: 1 = keep the original)
    broadcasts as (c, h, w) for one mask or (f, c, h, w) for one per frame; where it is 1 the
    latent stays the first image, so the kept area is not noised and matches what the sampler
    blends back every step.
    """
    frames = noise.shape[0]
    if len(weights.first) != frames:
        raise ValueError(f"{len(weights.first)} frame weights for {frames} noise frames")
    if any(weights.last) and last is None:
        raise ValueError("weights use a last frame, but no last-frame latent was given")
    e0 = first.reshape(-1, *noise.shape[1:]).to(noise.device, torch.float32)
    if e0.shape[0] not in (1, frames):
        raise ValueError(f"{e0.shape[0]} first-image latents for {frames} frames; give one or one per frame")

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=noise.device).view(frames, 1, 1, 1)

    z = column(weights.first) * e0 + column(weights.noise) * noise.float()  # (f, c, h, w)
    if last is not None:
        z = z + column(weights.last) * last.reshape(1, *noise.shape[1:]).to(noise.device, torch.float32)
    if keep_mask is not None:
        keep = keep_mask.to(noise.device, torch.float32)
        z = keep * e0 + (1.0 - keep) * z
    return z.to(noise.dtype)
