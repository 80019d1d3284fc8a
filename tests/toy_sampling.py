"""A k-diffusion-style Euler sampler over the windowed denoiser, for FreeInit tests and benchmarks.

``euler_sampler`` returns ``sample(start, steps)`` with the calling convention of
``motion_module.freeinit.free_init``: ``start`` is unit-scale noise (f, c, h, w), multiplied by the
first sigma inside, as the WebUI's k-samplers do; the result is the denoised latent. One
conditioning block (no CFG) keeps it cheap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from motion_module.demo import sigmas_for
from motion_module.frames import FrameLayout
from motion_module.params import WindowParams
from motion_module.windows import WindowedDenoiser


def euler_sampler(
    unet: nn.Module,
    layout: FrameLayout,
    window: WindowParams,
    frames: int,
    context: torch.Tensor,
    alphas: torch.Tensor,
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Euler steps on eps-prediction through ``WindowedDenoiser``; ``context`` is (f, tokens, dim)."""

    def sample(start: torch.Tensor, steps: int) -> torch.Tensor:
        timesteps, sigmas = sigmas_for(steps, alphas)

        def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            c_in = 1 / (sigma**2 + 1).sqrt()
            t = timesteps[(sigmas[:-1, None] - sigma[None]).abs().argmin(0)]
            return x - sigma[:, None, None, None] * unet(x * c_in[:, None, None, None], t, cond)

        current = [0]
        run = WindowedDenoiser(denoise, window, layout, frames, step=lambda: current[0])
        x = start * sigmas[0]
        with torch.no_grad():
            for step in range(steps):
                current[0] = step
                denoised = run(x, sigmas[step].expand(frames), cond=context)
                x = denoised + (x - denoised) / sigmas[step] * sigmas[step + 1]
        return x

    return sample
