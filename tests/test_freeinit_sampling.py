"""FreeInit and FreeNoise around real sampling: an Euler sampler over the windowed denoiser on the
tiny ldm UNet with a motion module, more frames than the context."""

from __future__ import annotations

import pytest
import torch
from factories import make_mm_state_dict, make_sd15_unet
from toy_sampling import euler_sampler

from motion_module.detect import detect
from motion_module.frames import FrameLayout
from motion_module.freeinit import free_init, low_pass_filter, mix_frequencies, sigma_of
from motion_module.freenoise import reschedule_noise
from motion_module.injection import inject
from motion_module.loading import build_module
from motion_module.params import WindowParams
from motion_module.spec import SPECS, Family, alphas_cumprod

pytestmark = pytest.mark.usefixtures("single_thread")

FRAMES, CONTEXT, SIZE, STEPS = 10, 6, 8, 2


@pytest.fixture(scope="module")
def sampler():
    unet = make_sd15_unet()
    model = build_module(detect(make_mm_state_dict(Family.V3), ""), "cpu", torch.float32)
    layout = FrameLayout()
    handle = inject(unet, model, layout, "sd15")
    alphas = alphas_cumprod(SPECS[Family.V3])
    context = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0)).expand(FRAMES, -1, -1)
    window = WindowParams(context=CONTEXT, overlap=2)
    yield euler_sampler(unet, layout, window, FRAMES, context, alphas), alphas
    handle.remove()


def start_noise() -> torch.Tensor:
    """Per-frame seeds as the WebUI draws them, then FreeNoise across the context blocks."""
    noise = torch.stack(
        [torch.randn(4, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(FRAMES)]
    )
    return reschedule_noise(noise, "freenoise", CONTEXT, seed=0)


def test_one_iteration_is_plain_windowed_sampling(sampler) -> None:
    sample, alphas = sampler
    noise = start_noise()
    mask = low_pass_filter(FRAMES, SIZE, SIZE)
    out = free_init(sample, noise, mask, iterations=1, steps=STEPS, sigma=sigma_of(alphas[-1]))
    assert torch.equal(out, sample(noise, STEPS))


def test_second_iteration_restarts_from_the_first_videos_low_frequencies(sampler) -> None:
    sample, alphas = sampler
    noise = start_noise()
    mask = low_pass_filter(FRAMES, SIZE, SIZE, "butterworth", 0.25, 0.25)
    sigma = sigma_of(alphas[-1])
    starts, results = [], []

    def recording(start: torch.Tensor, steps: int) -> torch.Tensor:
        starts.append(start)
        results.append(sample(start, steps))
        return results[-1]

    out = free_init(recording, noise, mask, iterations=2, steps=STEPS, sigma=sigma)
    assert torch.equal(starts[0], noise) and torch.equal(out, results[1])
    low = mix_frequencies(results[0], torch.zeros_like(noise), mask)
    torch.testing.assert_close(starts[1], low / sigma + noise, rtol=0, atol=1e-5)
    assert bool(torch.isfinite(out).all())
    assert (results[1] - results[0]).abs().max() > 1e-3  # the restart changed the video
