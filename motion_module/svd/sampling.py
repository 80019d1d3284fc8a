"""SVD's sampler: EDM sigma schedule, v-prediction preconditioning, frame-wise CFG ramp, Euler.

Written from the behaviour of Stability's reference sampling for SVD and SVD-XT (``EulerEDMSampler``
over ``EDMDiscretization(sigma_max=700)``, the ``Denoiser`` with ``VScalingWithEDMcNoise`` and the
``LinearPredictionGuider``), which diffusers reproduces with ``EulerDiscreteScheduler`` configured
as the SVD repositories ship it::

    use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0, prediction_type="v_prediction",
    timestep_type="continuous", timestep_spacing="leading", final_sigmas_type="zero" (default)

The facts this module relies on:

- sigmas: ``n`` values from ``sigma_max`` down to ``sigma_min`` spaced evenly in ``sigma**(1/rho)``
  (rho = 7, the EDM paper's value), then a final 0; ``n`` steps in all.
- the starting latent is unit Gaussian noise times ``sqrt(1 + sigma_max**2)`` (the reference
  multiplies by ``sqrt(1 + sigmas[0]**2)``; diffusers' ``init_noise_sigma`` for "leading" spacing
  is the same number).
- preconditioning (v-prediction with EDM's c_noise): ``c_skip = 1/(sigma**2+1)``,
  ``c_out = -sigma/sqrt(sigma**2+1)``, ``c_in = 1/sqrt(sigma**2+1)``, ``c_noise = 0.25*ln(sigma)``;
  the network sees ``x*c_in`` and ``c_noise`` as its timestep, and the denoised estimate is
  ``network_out*c_out + x*c_skip``. No quantisation of sigma (plain ``Denoiser``, not discrete).
- guidance: unconditional and conditional predictions in one batch, mixed per frame with a scale
  rising linearly from ``min_guidance`` on the first frame to ``max_guidance`` on the last.
  Guidance is linear, so mixing the network outputs (diffusers) or the denoised estimates (the
  reference) gives the same result.
- Euler: ``d = (x - denoised)/sigma``; ``x_next = x + d*(sigma_next - sigma)``. The last step goes to
  sigma 0, so it lands on the denoised estimate.

k-diffusion is not imported: the three formulas above are all the sampler needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

SIGMA_MIN = 0.002
SIGMA_MAX = 700.0
RHO = 7.0


def sigma_schedule(
    steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """``steps + 1`` float32 sigmas, descending from ``sigma_max`` to ``sigma_min``, then 0.

    Computed in float64 and rounded once, so the values are diffusers' float32 numbers exactly."""
    if steps < 1:
        raise ValueError(f"SVD sampling: steps = {steps} is not allowed; expected 1 or more")
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = (top + ramp * (bottom - top)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def initial_noise_scale(sigmas: torch.Tensor) -> float:
    """What unit noise is multiplied by to start sampling: ``sqrt(1 + sigma_0**2)``."""
    return math.sqrt(1.0 + float(sigmas[0]) ** 2)


@dataclass(frozen=True)
class Preconditioning:
    """The four scalings of v-prediction with EDM's noise conditioning, for one sigma."""

    c_skip: float
    c_out: float
    c_in: float
    c_noise: float


def v_preconditioning(sigma: float) -> Preconditioning:
    variance = sigma * sigma + 1.0
    return Preconditioning(
        c_skip=1.0 / variance,
        c_out=-sigma / math.sqrt(variance),
        c_in=1.0 / math.sqrt(variance),
        c_noise=0.25 * math.log(sigma),
    )


def guidance_ramp(min_scale: float, max_scale: float, frames: int) -> torch.Tensor:
    """One guidance scale per frame, linear from ``min_scale`` (first) to ``max_scale`` (last);
    float32 as the reference and diffusers build it."""
    return torch.linspace(min_scale, max_scale, frames, dtype=torch.float32)


def apply_guidance(uncond: torch.Tensor, cond: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
    """``uncond + scale*(cond - uncond)`` with one scale per frame; frames on dim 0."""
    scale = ramp.to(device=cond.device, dtype=cond.dtype).view(-1, *([1] * (cond.ndim - 1)))
    return uncond + scale * (cond - uncond)


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    derivative = (x - denoised) / sigma
    return x + derivative * (sigma_next - sigma)


# (scaled input x*c_in, c_noise) -> (unconditional, conditional) network outputs, frames on dim 0
GuidedNetwork = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def denoise(network: GuidedNetwork, x: torch.Tensor, sigma: float, ramp: torch.Tensor) -> torch.Tensor:
    """The guided denoised estimate of ``x`` at ``sigma``."""
    scale = v_preconditioning(sigma)
    uncond, cond = network(x * scale.c_in, scale.c_noise)
    return apply_guidance(uncond, cond, ramp) * scale.c_out + x * scale.c_skip


class StepAbandoned(Exception):
    """Raised from inside the network (between its blocks) when a stop should not wait for the
    step to finish; ``sample_euler`` ends as for a stop before that step."""


@dataclass
class SamplingOutcome:
    latents: torch.Tensor  # the sample, or the last denoised estimate when stopped early
    steps_done: int
    interrupted: bool


def sample_euler(
    network: GuidedNetwork,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    ramp: torch.Tensor,
    *,
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SamplingOutcome:
    """Run ``len(sigmas) - 1`` Euler steps from ``noise`` (unit Gaussian, frames on dim 0).

    ``should_stop()`` is asked before each step; when it says so (or the network raises
    ``StepAbandoned`` during a step) the loop ends and the outcome holds the last finished step's
    denoised estimate (the cleanest picture so far) with ``interrupted=True``.
    ``on_step(done, total)`` is called after each finished step."""
    total = len(sigmas) - 1
    values = [float(s) for s in sigmas]
    x = noise * initial_noise_scale(sigmas)
    denoised = None
    for i in range(total):
        stopped = should_stop is not None and should_stop()
        if not stopped:
            try:
                estimate = denoise(network, x, values[i], ramp)
            except StepAbandoned:
                stopped = True
        if stopped:
            return SamplingOutcome(
                latents=denoised if denoised is not None else x, steps_done=i, interrupted=True
            )
        denoised = estimate
        x = euler_step(x, denoised, values[i], values[i + 1])
        if on_step is not None:
            on_step(i + 1, total)
    return SamplingOutcome(latents=x, steps_done=total, interrupted=False)
