"""Host seam for the starting noise of each video: FreeNoise rescheduling and FreeInit.

Inside ``p.sample`` the WebUI draws a batch's noise with ``p.rng.next()`` (txt2img: the first
pass, then once more for the hires pass; img2img: one draw, added to the init latent at the
sampler's first noise level) and hands it to its sampler, which scales it (k-diffusion samplers
multiply by their first sigma). ``sample`` runs the WebUI's own ``p.sample`` with ``p.rng``
replaced for the call by ``Noise``, which hands out the noise we chose:

- FreeNoise: every draw rescheduled (``motion_module.freenoise``), seeded by the video's first seed.
- FreeInit: the WebUI's ``p.sample`` runs ``iters`` times. Each later pass starts from the low
  frequencies of the last result re-noised to the sampler's first noise level, plus the high
  frequencies of the first noise (``motion_module.freeinit.reinit_noise``); the hires pass, the
  inpaint mask and the full step count (with the coarse-to-fine setting) belong to the last pass
  only. In img2img each pass restarts from the init latent, so what carries over is what the last
  pass changed (result − init latent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from motion_module.freeinit import coarse_to_fine_steps, low_pass_filter, reinit_noise, sigma_of
from motion_module.freenoise import reschedule_noise
from motion_module.params import AnimateDiffParams, NoiseType

from . import host_changes
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

Sample = Callable[[], torch.Tensor]


class Noise:
    """Stands in for ``p.rng`` during one ``p.sample``: the first draw is ``first`` (if given),
    every other draw comes from the WebUI's generator through ``reschedule``."""

    def __init__(
        self, rng: Any, first: torch.Tensor | None, reschedule: Callable[[torch.Tensor], torch.Tensor]
    ):
        self.rng, self.first, self.reschedule = rng, first, reschedule

    def next(self) -> torch.Tensor:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return self.reschedule(self.rng.next())

    def __getattr__(self, name: str) -> Any:  # the WebUI reads e.g. rng.shape
        return getattr(self.rng, name)


def active(params: AnimateDiffParams) -> bool:
    return params.freeinit.enable or _rescheduled(params)


def _rescheduled(params: AnimateDiffParams) -> bool:
    return params.noise_type is not NoiseType.DEFAULT and params.frames > params.window.context


def _rescheduler(p: Any, params: AnimateDiffParams) -> Callable[[torch.Tensor], torch.Tensor]:
    if not _rescheduled(params):
        return lambda noise: noise
    seed = int((getattr(p, "seeds", None) or [0])[0])
    return lambda noise: reschedule_noise(noise, params.noise_type, params.window.context, seed)


def sample(p: Any, params: AnimateDiffParams, session: PatchSession, state: Any, run: Sample) -> torch.Tensor:
    """``run()`` is the WebUI's ``p.sample`` for this batch; returns what it returns."""
    reschedule = _rescheduler(p, params)
    if not params.freeinit.enable:
        with host_changes.sampling_pass(p, {"rng": Noise(p.rng, None, reschedule)}):
            return run()
    return _free_init(p, params, session, state, run, reschedule)


def _free_init(p, params, session, state, run: Sample, reschedule) -> torch.Tensor:
    fi = params.freeinit
    img2img = getattr(p, "init_latent", None) is not None
    if img2img:
        _need_k_diffusion(p)
    rng = p.rng
    noise = reschedule(rng.next())
    frames, _, height, width = noise.shape
    low_pass = low_pass_filter(frames, height, width, fi.filter, fi.ds, fi.dt, device=noise.device)
    host_changes.more_jobs(session, "FreeInit phases", state, fi.iters - 1)
    host_changes.progress_text(state, "AnimateDiff: FreeInit iteration 1")
    total_steps = int(p.steps)
    start, result = noise, None
    for i in range(fi.iters):
        last = i == fi.iters - 1
        if i > 0:
            base = result - p.init_latent if img2img else result
            sigma = _first_sigma(p, img2img)
            if sigma is None:  # a timestep sampler (DDIM, PLMS, UniPC) starts from unit-variance x_T
                alpha_bar = float(p.sd_model.alphas_cumprod[-1])
                start = reinit_noise(base, noise, noise, low_pass, alpha_bar=alpha_bar)
            else:
                start = reinit_noise(base, noise, noise, low_pass, sigma=sigma) / sigma
            host_changes.next_phase(session, state, f"AnimateDiff: FreeInit iteration {i + 1}")
        values: dict[str, Any] = {"rng": Noise(rng, start.to(noise.dtype), reschedule)}
        if fi.coarse_to_fine:
            values["steps"] = coarse_to_fine_steps(total_steps, i, fi.iters)
        if not last:
            values["enable_hr"] = False
            if getattr(p, "mask", None) is not None:
                values.update(mask=None, nmask=None)
        with host_changes.sampling_pass(p, values):
            result = run()
        log.info("AnimateDiff: FreeInit iteration %d/%d done", i + 1, fi.iters)
    return result


def _k_diffusion(p: Any) -> bool:
    from modules import sd_samplers_kdiffusion

    return isinstance(getattr(p, "sampler", None), sd_samplers_kdiffusion.KDiffusionSampler)


def _need_k_diffusion(p: Any) -> None:
    if not _k_diffusion(p):
        raise ValueError(
            f"AnimateDiff: freeinit_enable = True is not available in img2img with the sampler "
            f"{getattr(p, 'sampler_name', '?')!r}; allowed: a k-diffusion sampler (Euler, DPM++, LCM, ...)"
        )


def _first_sigma(p: Any, img2img: bool) -> float | None:
    """The noise level the sampler's first step starts at (None: a timestep sampler)."""
    if not _k_diffusion(p):
        return None
    if not img2img:
        return sigma_of(float(p.sd_model.alphas_cumprod[-1]))
    from modules import sd_samplers_common

    steps, t_enc = sd_samplers_common.setup_img2img_steps(p)
    return float(p.sampler.get_sigmas(p, steps)[steps - t_enc - 1])
