"""FreeInit: restart sampling from noise that keeps the low frequencies of the previous video.

A video's layout and motion are decided by the low spatio-temporal frequencies of its starting
noise, and plain Gaussian noise has no temporal correlation there. FreeInit samples once, diffuses
the result back to the first timestep, keeps that latent's low frequencies (3-D FFT over frames ×
height × width) and takes the high frequencies from noise; sampling again from the mixture gives a
steadier video. Each iteration is one full sampling run, so ``iters`` iterations cost ``iters``
times one video (fewer with coarse-to-fine steps).

Layout: one video as (f, c, h, w), frames first, exactly the WebUI's latent batch (one row per
frame). Filters are (f, 1, h, w) and broadcast over channels. Called by the adapter around the
WebUI's sampling; imports no WebUI module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .params import FreeInitFilter

FILTER_ORDER = 4  # Butterworth order, fixed as in the predecessor and FreeInit's defaults
_DIMS = (0, 2, 3)  # the (f, h, w) axes of an (f, c, h, w) video


def _stop_frequency(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} is {value!r}; allowed: a number 0..1")
    return float(value)


def _filter_kind(kind: FreeInitFilter | str) -> FreeInitFilter:
    try:
        return FreeInitFilter(kind)
    except ValueError:
        allowed = ", ".join(f.value for f in FreeInitFilter)
        raise ValueError(f"freeinit_filter is {kind!r}; allowed: {allowed}") from None


def _axis(n: int) -> torch.Tensor:
    """Normalised frequency of each fftshift-ed index: 2i/n − 1, in [−1, 1).

    Zero frequency sits at index n // 2; for odd n this puts it at −1/n rather than 0, as the
    published FreeInit masks do, so masks agree with them value for value.
    """
    return 2.0 * torch.arange(n, dtype=torch.float64) / n - 1.0


def low_pass_filter(
    frames: int,
    height: int,
    width: int,
    kind: FreeInitFilter | str = FreeInitFilter.BUTTERWORTH,
    ds: float = 0.25,
    dt: float = 0.25,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The low-pass mask (f, 1, h, w), float32, centred (zero frequency at index n // 2 per axis).

    ``ds`` and ``dt`` are the spatial and temporal stop frequencies, fractions of the Nyquist
    frequency. The squared distance of a bin from zero frequency is
    d² = ((ds/dt)·u_f)² + u_h² + u_w² with u from ``_axis``, so the temporal axis is stretched until
    ``dt`` along it counts as much as ``ds`` spatially. Filters of d²:
    butterworth 1 / (1 + (d²/ds²)^4); gaussian exp(−d² / (2·ds²)); ideal 1 where d² ≤ 2·ds (the
    threshold FreeInit published, kept for identical results: ds = 0.25 passes d ≤ 0.71), else 0;
    box 1 inside the cuboid |u_f| ≤ dt, |u_h| ≤ ds, |u_w| ≤ ds. ``ds`` or ``dt`` of 0 passes
    nothing: the next start is then pure noise.
    """
    kind = _filter_kind(kind)
    ds = _stop_frequency("freeinit_ds", ds)
    dt = _stop_frequency("freeinit_dt", dt)
    for name, n in (("frames", frames), ("height", height), ("width", width)):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"{name} is {n!r}; allowed: a whole number ≥ 1")
    if ds == 0.0 or dt == 0.0:
        return torch.zeros(frames, 1, height, width, device=device)
    u_f = _axis(frames).view(-1, 1, 1, 1)
    u_h = _axis(height).view(1, 1, -1, 1)
    u_w = _axis(width).view(1, 1, 1, -1)
    if kind == FreeInitFilter.BOX:
        mask = (u_f.abs() <= dt) & (u_h.abs() <= ds) & (u_w.abs() <= ds)
        return mask.to(torch.float32).to(device)
    d2 = ((ds / dt) * u_f) ** 2 + u_h**2 + u_w**2  # (f, 1, h, w) by broadcasting
    if kind == FreeInitFilter.BUTTERWORTH:
        mask = 1.0 / (1.0 + (d2 / ds**2) ** FILTER_ORDER)
    elif kind == FreeInitFilter.GAUSSIAN:
        mask = torch.exp(-d2 / (2.0 * ds**2))
    else:  # IDEAL
        mask = (d2 <= 2.0 * ds).to(torch.float64)
    return mask.to(torch.float32).to(device)


def _check_video(name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if t.dim() != 4:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected one video as (frames, c, h, w)")
    if like is not None and t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, but the video is {tuple(like.shape)}")


def mix_frequencies(
    low_source: torch.Tensor, high_source: torch.Tensor, low_pass: torch.Tensor
) -> torch.Tensor:
    """F⁻¹[ L·F(low_source) + (1 − L)·F(high_source) ], real part, in ``low_source``'s dtype.

    F is the 3-D FFT over (f, h, w) of (f, c, h, w) videos; L is a centred mask from
    ``low_pass_filter``. Both sources must already be on the same scale (the mix is linear, it
    does not rescale). Shifting the mask to the FFT's own bin order is the same permutation as
    fftshift-ing both spectra and shifting back, done once on the small mask instead.
    """
    _check_video("low_source", low_source)
    _check_video("high_source", high_source, low_source)
    f, _, h, w = low_source.shape
    if tuple(low_pass.shape) != (f, 1, h, w):
        raise ValueError(
            f"low_pass has shape {tuple(low_pass.shape)}; expected {(f, 1, h, w)} for this video"
        )
    mask = torch.fft.ifftshift(low_pass.to(low_source.device, torch.float32), dim=_DIMS)
    low = torch.fft.fftn(low_source.float(), dim=_DIMS)
    high = torch.fft.fftn(high_source.float(), dim=_DIMS)
    mixed = low * mask + high * (1.0 - mask)
    return torch.fft.ifftn(mixed, dim=_DIMS).real.to(low_source.dtype)


def diffuse_vp(z0: torch.Tensor, noise: torch.Tensor, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """√ā·z0 + √(1 − ā)·noise: a clean latent diffused to the timestep with cumulative alpha ā
    (variance-preserving form of DDPM/DDIM samplers and diffusers' schedulers)."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return z0 * float(a.sqrt()) + noise * float((1.0 - a).sqrt())


def diffuse_sigma(z0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """z0 + σ·noise: a clean latent diffused to noise level σ (k-diffusion form, the WebUI's
    k-samplers; the same point as ``diffuse_vp`` divided by √ā, with σ = √((1 − ā)/ā))."""
    return z0 + noise * float(sigma)


def sigma_of(alpha_bar: float | torch.Tensor) -> float:
    """σ = √((1 − ā)/ā), the k-diffusion noise level of the timestep with cumulative alpha ā."""
    a = float(alpha_bar)
    return math.sqrt((1.0 - a) / a)


def reinit_noise(
    z0: torch.Tensor,
    noise: torch.Tensor,
    fresh_noise: torch.Tensor,
    low_pass: torch.Tensor,
    *,
    sigma: float | None = None,
    alpha_bar: float | None = None,
) -> torch.Tensor:
    """The next iteration's start x_T: low frequencies of ``z0`` diffused with ``noise``, high
    frequencies of ``fresh_noise`` at the scale of starting noise. Give exactly one of:

    ``alpha_bar`` (VP): low(√ā·z0 + √(1 − ā)·noise) + high(fresh_noise). Unit-variance x_T, as
    timestep samplers start; with diffusers' choices (ā at the last training timestep, ``noise`` =
    the first iteration's noise, ``fresh_noise`` = new Gaussian noise) this is its FreeInit.

    ``sigma`` (k-diffusion): low(z0 + σ·noise) + high(σ·fresh_noise). x_T on the σ scale, as
    k-samplers start (x = σ·ε); a sampler that multiplies unit noise by σ itself (the WebUI's do)
    wants this divided by σ.

    ``noise`` and ``fresh_noise`` are unit-variance (f, c, h, w) tensors.
    """
    _check_video("z0", z0)
    _check_video("noise", noise, z0)
    _check_video("fresh_noise", fresh_noise, z0)
    if (sigma is None) == (alpha_bar is None):
        raise ValueError("reinit_noise needs exactly one of sigma (k-diffusion) or alpha_bar (VP)")
    if alpha_bar is not None:
        if not 0.0 < float(alpha_bar) <= 1.0:
            raise ValueError(f"alpha_bar is {float(alpha_bar)!r}; allowed: 0 < alpha_bar ≤ 1")
        return mix_frequencies(diffuse_vp(z0, noise, alpha_bar), fresh_noise, low_pass)
    if not (math.isfinite(float(sigma)) and float(sigma) > 0.0):
        raise ValueError(f"sigma is {float(sigma)!r}; allowed: a finite number > 0")
    return mix_frequencies(diffuse_sigma(z0, noise, sigma), fresh_noise * float(sigma), low_pass)


def coarse_to_fine_steps(total_steps: int, iteration: int, iterations: int) -> int:
    """Steps for ``iteration`` (0-based) of ``iterations`` when early iterations may be coarse:
    max(1, int(total / iterations · (iteration + 1))); the last iteration gets ``total_steps``.

    Early iterations only need to fix the low frequencies, which few steps already get right.
    """
    if iterations < 1 or not 0 <= iteration < iterations:
        raise ValueError(
            f"iteration {iteration} of {iterations}; allowed: 0 ≤ iteration < iterations, iterations ≥ 1"
        )
    if total_steps < 1:
        raise ValueError(f"total_steps is {total_steps}; allowed: a whole number ≥ 1")
    return max(1, int(total_steps / iterations * (iteration + 1)))


Sample = Callable[[torch.Tensor, int], torch.Tensor]


def free_init(
    sample: Sample,
    noise: torch.Tensor,
    low_pass: torch.Tensor,
    *,
    iterations: int,
    steps: int,
    sigma: float | None = None,
    alpha_bar: float | None = None,
    fresh_noise: Callable[[int], torch.Tensor] | None = None,
    coarse_to_fine: bool = False,
) -> torch.Tensor:
    """Run ``iterations`` sampling passes; return the last pass's denoised video.

    ``sample(start, steps)`` runs one complete sampling of ``steps`` steps from unit-scale noise
    ``start`` (f, c, h, w), as a WebUI sampler takes it, and returns the denoised latent z0.
    Iteration 0 starts from ``noise``; iteration i > 0 from ``reinit_noise(z0, noise,
    fresh_noise(i), …)``, divided by σ in the k-diffusion form so it is unit-scale again.
    ``fresh_noise`` None reuses ``noise`` (the predecessor's choice: reproducible from the seed,
    and then the start is exactly low(z0)/σ + noise); diffusers draws new noise each iteration.
    Use the last training timestep for the level: ā = alphas_cumprod[-1], or σ = ``sigma_of`` it.
    """
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ValueError(f"freeinit_iters is {iterations!r}; allowed: a whole number ≥ 1")
    if iterations > 1 and (sigma is None) == (alpha_bar is None):
        raise ValueError("free_init needs exactly one of sigma (k-diffusion) or alpha_bar (VP)")
    start = noise
    z0 = noise
    for i in range(iterations):
        if i > 0:
            fresh = noise if fresh_noise is None else fresh_noise(i)
            start = reinit_noise(z0, noise, fresh, low_pass, sigma=sigma, alpha_bar=alpha_bar)
            if sigma is not None:
                start = start / float(sigma)
        n = coarse_to_fine_steps(steps, i, iterations) if coarse_to_fine else steps
        z0 = sample(start, n)
    return z0
