"""SVD sampling: sigmas, preconditioning, CFG ramp and Euler steps against diffusers and by hand.

The peer is diffusers' ``EulerDiscreteScheduler`` configured as the official SVD / SVD-XT
repositories' ``scheduler/scheduler_config.json`` (``svd_peers.SVD_SCHEDULER_CONFIG``).
"""

from __future__ import annotations

import math

import pytest
import torch
from svd_peers import diffusers_scheduler

from motion_module.svd.sampling import (
    SIGMA_MAX,
    SIGMA_MIN,
    StepAbandoned,
    apply_guidance,
    denoise,
    euler_step,
    guidance_ramp,
    initial_noise_scale,
    sample_euler,
    sigma_schedule,
    v_preconditioning,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def svd_scheduler(steps: int):
    scheduler = diffusers_scheduler()
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [1, 2, 4, 25, 30])
def test_sigma_schedule_is_diffusers_svd_scheduler(steps) -> None:
    scheduler = svd_scheduler(steps)
    ours = sigma_schedule(steps)
    assert ours.dtype == torch.float32 and len(ours) == steps + 1
    assert torch.equal(ours, scheduler.sigmas)
    assert ours[0] == pytest.approx(SIGMA_MAX) and float(ours[-1]) == 0.0
    assert float(ours[-2]) == pytest.approx(SIGMA_MIN, rel=1e-6) or steps == 1
    # diffusers' "timesteps" for this config are EDM's c_noise = ln(sigma)/4
    for sigma, timestep in zip(ours[:-1], scheduler.timesteps, strict=True):
        assert v_preconditioning(float(sigma)).c_noise == pytest.approx(float(timestep), abs=1e-6)
    assert initial_noise_scale(ours) == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-7)


def test_sigma_schedule_by_hand() -> None:
    # 3 steps: the middle sigma is ((700^(1/7) + 0.002^(1/7)) / 2)^7
    middle = ((700 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert sigma_schedule(3).tolist() == pytest.approx([700.0, middle, 0.002, 0.0], rel=1e-6)
    assert middle == pytest.approx(15.58997, rel=1e-6)
    with pytest.raises(ValueError, match="steps = 0"):
        sigma_schedule(0)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 1.0, 14.6, 700.0])
def test_preconditioning_formulas(sigma) -> None:
    scale = v_preconditioning(sigma)
    assert scale.c_skip == pytest.approx(1 / (sigma**2 + 1), rel=1e-12)
    assert scale.c_out == pytest.approx(-sigma / math.sqrt(sigma**2 + 1), rel=1e-12)
    assert scale.c_in == pytest.approx(1 / math.sqrt(sigma**2 + 1), rel=1e-12)
    assert scale.c_noise == pytest.approx(0.25 * math.log(sigma), rel=1e-12)
    # v-prediction identity: with the true v = alpha*eps - sigma_vp*x0 the estimate is x0 exactly
    x0, eps = 0.3, -1.2
    x = x0 + sigma * eps
    alpha, sigma_vp = 1 / math.sqrt(sigma**2 + 1), sigma / math.sqrt(sigma**2 + 1)
    v = alpha * eps - sigma_vp * x0
    assert v * scale.c_out + x * scale.c_skip == pytest.approx(x0, rel=1e-9, abs=1e-12)


def test_guidance_ramp_numbers() -> None:
    assert guidance_ramp(1.0, 3.0, 5).tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert torch.equal(guidance_ramp(1.0, 3.0, 25), torch.linspace(1.0, 3.0, 25).float())
    assert guidance_ramp(2.5, 2.5, 1).tolist() == [2.5]
    uncond = torch.zeros(3, 2, 1, 1)
    cond = torch.ones(3, 2, 1, 1)
    mixed = apply_guidance(uncond, cond, guidance_ramp(1.0, 2.0, 3))
    assert mixed[:, 0, 0, 0].tolist() == [1.0, 1.5, 2.0]


def test_one_euler_step_with_a_fake_denoiser_by_hand() -> None:
    # x = 2 at sigma 4 -> 1; the network returns v_u = 1, v_c = 3; frame scale 2 -> v = 5
    x = torch.full((1, 1, 1, 1), 2.0)
    ramp = torch.tensor([2.0])

    def network(scaled, c_noise):
        assert scaled.item() == pytest.approx(2.0 / math.sqrt(17))
        assert c_noise == pytest.approx(0.25 * math.log(4.0))
        return torch.ones_like(scaled), torch.full_like(scaled, 3.0)

    denoised = denoise(network, x, 4.0, ramp)
    expected_denoised = 5.0 * (-4.0 / math.sqrt(17)) + 2.0 / 17
    assert denoised.item() == pytest.approx(expected_denoised, rel=1e-6)
    stepped = euler_step(x, denoised, 4.0, 1.0)
    assert stepped.item() == pytest.approx(2.0 + (2.0 - expected_denoised) / 4.0 * (1.0 - 4.0), rel=1e-6)
    # to sigma 0 an Euler step lands on the denoised estimate
    assert torch.allclose(euler_step(x, denoised, 4.0, 0.0), denoised)


def _fake_v(x: torch.Tensor, c_noise: float, weight: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x * weight + c_noise)


def test_whole_loop_equals_diffusers_scheduler_with_frame_guidance() -> None:
    steps, frames = 6, 5
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(frames, 4, 3, 3, generator=generator)
    w_u, w_c = torch.randn(4, 1, 1, generator=generator), torch.randn(4, 1, 1, generator=generator)
    ramp = guidance_ramp(1.0, 3.0, frames)

    def network(scaled, c_noise):
        return _fake_v(scaled, c_noise, w_u), _fake_v(scaled, c_noise, w_c)

    ours = sample_euler(network, noise, sigma_schedule(steps), ramp)

    scheduler = svd_scheduler(steps)
    latents = noise * scheduler.init_noise_sigma
    scale = ramp.view(-1, 1, 1, 1)
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(latents, t)
        v_u, v_c = _fake_v(scaled, float(t), w_u), _fake_v(scaled, float(t), w_c)
        latents = scheduler.step(v_u + scale * (v_c - v_u), t, latents).prev_sample
    assert ours.steps_done == steps and not ours.interrupted
    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)


def test_should_stop_and_on_step() -> None:
    calls: list[tuple[int, int]] = []
    asked = []

    def network(scaled, c_noise):
        return scaled * 0, scaled * 0 + 0.5

    def should_stop():
        asked.append(1)
        return len(asked) > 2

    noise = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample_euler(
        network,
        noise,
        sigma_schedule(5),
        guidance_ramp(1, 1, 2),
        on_step=lambda d, t: calls.append((d, t)),
        should_stop=should_stop,
    )
    assert out.interrupted and out.steps_done == 2 and calls == [(1, 5), (2, 5)]
    # what is returned is the last denoised estimate (step 2's), not the noisy latent
    sigmas = sigma_schedule(5).tolist()
    x = noise * initial_noise_scale(sigma_schedule(5))
    ramp = guidance_ramp(1, 1, 2)
    x = euler_step(x, denoise(network, x, sigmas[0], ramp), sigmas[0], sigmas[1])
    assert torch.equal(out.latents, denoise(network, x, sigmas[1], ramp))
    assert sample_euler(network, noise, sigma_schedule(5), ramp, should_stop=lambda: True).steps_done == 0
    full = sample_euler(
        network, noise, sigma_schedule(5), guidance_ramp(1, 1, 2), on_step=lambda d, t: calls.append((d, t))
    )
    assert full.steps_done == 5 and not full.interrupted and calls[-1] == (5, 5) and len(calls) == 7


def test_a_step_abandoned_inside_the_network_ends_as_a_stop_before_it() -> None:
    def network(scaled, c_noise):
        return scaled * 0, scaled * 0 + 0.5

    calls = []

    def abandoning(scaled, c_noise):
        calls.append(c_noise)
        if len(calls) == 3:
            raise StepAbandoned("stop")
        return network(scaled, c_noise)

    noise = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    ramp = guidance_ramp(1, 1, 2)
    inside = sample_euler(abandoning, noise, sigma_schedule(5), ramp)
    asked = []
    before = sample_euler(
        network, noise, sigma_schedule(5), ramp, should_stop=lambda: asked.append(1) or len(asked) > 2
    )
    assert inside.interrupted and inside.steps_done == 2 and torch.equal(inside.latents, before.latents)

    def abandoned_at_once(scaled, c_noise):
        raise StepAbandoned("stop")

    first = sample_euler(abandoned_at_once, noise, sigma_schedule(5), ramp)
    start = noise * initial_noise_scale(sigma_schedule(5))
    assert first.interrupted and first.steps_done == 0 and torch.equal(first.latents, start)
