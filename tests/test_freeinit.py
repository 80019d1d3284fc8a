"""FreeInit: masks and the frequency mix against diffusers' FreeInit, the re-init step against
diffusers' whole iteration, coarse-to-fine step counts, and the driver."""

from __future__ import annotations

import itertools

import pytest
import torch

from motion_module.freeinit import (
    coarse_to_fine_steps,
    diffuse_sigma,
    diffuse_vp,
    free_init,
    low_pass_filter,
    mix_frequencies,
    reinit_noise,
    sigma_of,
)

diffusers_freeinit = pytest.importorskip("diffusers.pipelines.free_init_utils")
REFERENCE = diffusers_freeinit.FreeInitMixin()

SHAPES = [(8, 8, 8), (5, 6, 7), (16, 4, 10)]  # (frames, h, w): even, odd, mixed
STOPS = [(0.25, 0.25), (0.5, 0.125), (1.0, 0.375), (0.125, 1.0), (0.0, 0.25), (0.25, 0.0)]


def reference_mask(kind: str, f: int, h: int, w: int, ds: float, dt: float) -> torch.Tensor:
    """diffusers' mask for a (1, c=1, f, h, w) video, as (f, 1, h, w)."""
    mask = REFERENCE._get_free_init_freq_filter((1, 1, f, h, w), "cpu", kind, 4, ds, dt)
    return mask[0].permute(1, 0, 2, 3)  # (1, f, h, w) -> (f, 1, h, w)


def video(f: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(f, c, h, w, generator=torch.Generator().manual_seed(seed))


def to_diffusers(x: torch.Tensor) -> torch.Tensor:
    return x.permute(1, 0, 2, 3).unsqueeze(0)  # (f, c, h, w) -> (1, c, f, h, w)


def from_diffusers(x: torch.Tensor) -> torch.Tensor:
    return x[0].permute(1, 0, 2, 3)  # (1, c, f, h, w) -> (f, c, h, w)


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("shape,stops", list(itertools.product(SHAPES, STOPS)))
def test_mask_matches_diffusers(kind, shape, stops) -> None:
    f, h, w = shape
    ds, dt = stops
    ours = low_pass_filter(f, h, w, kind, ds, dt)
    ref = reference_mask(kind, f, h, w, ds, dt)
    assert ours.shape == (f, 1, h, w) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)
    if ds and dt:
        assert 0 < float(ours.sum()) < ours.numel()  # neither empty nor all-pass at these sizes
    else:
        assert not ours.any()


def test_box_is_the_central_cuboid() -> None:
    # u = i/4 − 1 on 8 bins: |u| ≤ 0.25 keeps bins 3, 4, 5; |u| ≤ 0.5 keeps bins 2..6
    mask = low_pass_filter(8, 8, 8, "box", ds=0.25, dt=0.5)
    expected = torch.zeros(8, 1, 8, 8)
    expected[2:7, :, 3:6, 3:6] = 1.0
    assert torch.equal(mask, expected)
    wide = low_pass_filter(6, 4, 10, "box", ds=1.0, dt=1.0)
    assert torch.equal(wide, torch.ones(6, 1, 4, 10))  # u ∈ [−1, 1): every bin inside
    assert not low_pass_filter(8, 8, 8, "box", ds=0.0, dt=0.5).any()


def test_butterworth_passes_zero_frequency_and_halves_at_the_stop() -> None:
    mask = low_pass_filter(8, 16, 16, "butterworth", ds=0.25, dt=0.25)
    assert float(mask[4, 0, 8, 8]) == 1.0  # zero frequency
    assert float(mask[4, 0, 8, 10]) == pytest.approx(0.5)  # u_w = 0.25 = ds
    assert float(mask[5, 0, 8, 8]) == pytest.approx(0.5)  # u_f = 0.25 = dt


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal", "box"])
@pytest.mark.parametrize("shape", SHAPES)
def test_mix_matches_diffusers(kind, shape) -> None:
    f, h, w = shape
    low_source, high_source = video(f, 4, h, w, 1) * 3.0, video(f, 4, h, w, 2)
    mask = low_pass_filter(f, h, w, kind, 0.375, 0.25)
    ours = mix_frequencies(low_source, high_source, mask)
    ref_mask = mask.permute(1, 0, 2, 3).unsqueeze(0)  # (f, 1, h, w) -> (1, 1, f, h, w)
    ref = REFERENCE._apply_freq_filter(to_diffusers(low_source), to_diffusers(high_source), ref_mask)
    torch.testing.assert_close(ours, from_diffusers(ref), rtol=0, atol=2e-6)
    assert (ours - low_source).abs().max() > 0.1 and (ours - high_source).abs().max() > 0.1


def test_mix_extremes_and_dc() -> None:
    low_source, high_source = video(8, 4, 8, 8, 3), video(8, 4, 8, 8, 4)
    ones, zeros = torch.ones(8, 1, 8, 8), torch.zeros(8, 1, 8, 8)
    torch.testing.assert_close(mix_frequencies(low_source, high_source, ones), low_source, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        mix_frequencies(low_source, high_source, zeros), high_source, rtol=0, atol=1e-6
    )
    # the zero-frequency bin passes (mask 1 there), so each channel's mean over (f, h, w) is low_source's
    mixed = mix_frequencies(low_source, high_source, low_pass_filter(8, 8, 8, "gaussian", 0.25, 0.25))
    torch.testing.assert_close(mixed.mean((0, 2, 3)), low_source.mean((0, 2, 3)), rtol=0, atol=1e-6)


def test_mix_keeps_dtype_and_refuses_mismatched_shapes() -> None:
    x = video(4, 2, 8, 8, 0).to(torch.float64)
    assert mix_frequencies(x, x, low_pass_filter(4, 8, 8)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"low_pass has shape \(4, 1, 8, 4\); expected \(4, 1, 8, 8\)"):
        mix_frequencies(x, x, low_pass_filter(4, 8, 4))
    with pytest.raises(ValueError, match="high_source has shape"):
        mix_frequencies(x, x[:2], low_pass_filter(4, 8, 8))


def make_pipeline(num_iters: int, method: str, ds: float, dt: float, fast: bool):
    from diffusers import DDIMScheduler

    class Pipeline(diffusers_freeinit.FreeInitMixin):
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")

    pipe = Pipeline()
    pipe.enable_free_init(num_iters, fast, method, 4, ds, dt)
    return pipe


@pytest.mark.parametrize(
    "method,ds,dt", [("butterworth", 0.25, 0.25), ("gaussian", 0.5, 0.125), ("ideal", 0.25, 0.5)]
)
def test_reinit_vp_is_diffusers_free_init_iteration(method, ds, dt) -> None:
    f, c, h, w = 8, 4, 8, 8
    pipe = make_pipeline(3, method, ds, dt, fast=False)
    noise, z0 = video(f, c, h, w, 5), video(f, c, h, w, 6) * 0.8
    pipe._apply_free_init(to_diffusers(noise), 0, 10, "cpu", torch.float32, None)  # remembers noise
    ref, _ = pipe._apply_free_init(
        to_diffusers(z0), 1, 10, "cpu", torch.float32, torch.Generator().manual_seed(7)
    )
    fresh = from_diffusers(torch.randn(1, c, f, h, w, generator=torch.Generator().manual_seed(7)))
    alpha_bar = float(pipe.scheduler.alphas_cumprod[-1])
    ours = reinit_noise(z0, noise, fresh, low_pass_filter(f, h, w, method, ds, dt), alpha_bar=alpha_bar)
    torch.testing.assert_close(ours, from_diffusers(ref), rtol=0, atol=2e-6)


def test_sigma_form_is_the_vp_form_rescaled() -> None:
    f, c, h, w = 8, 4, 8, 8
    z0, noise, fresh = video(f, c, h, w, 1), video(f, c, h, w, 2), video(f, c, h, w, 3)
    mask = low_pass_filter(f, h, w, "butterworth", 0.25, 0.25)
    alpha_bar = 0.0047
    sigma = sigma_of(alpha_bar)
    torch.testing.assert_close(
        diffuse_sigma(z0, noise, sigma) * alpha_bar**0.5, diffuse_vp(z0, noise, alpha_bar)
    )
    zero = torch.zeros_like(z0)
    low_vp = reinit_noise(z0, noise, zero, mask, alpha_bar=alpha_bar)
    low_sigma = reinit_noise(z0, noise, zero, mask, sigma=sigma)
    torch.testing.assert_close(low_sigma * alpha_bar**0.5, low_vp, rtol=1e-5, atol=1e-6)
    high = reinit_noise(zero, zero, fresh, mask, sigma=sigma)  # fresh noise enters at scale σ
    torch.testing.assert_close(high, sigma * mix_frequencies(zero, fresh, mask), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one of sigma"):
        reinit_noise(z0, noise, fresh, mask)


@pytest.mark.parametrize("total", [1, 2, 7, 20, 25, 30])
@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_coarse_to_fine_steps_match_diffusers(total, iterations) -> None:
    pipe = make_pipeline(iterations, "butterworth", 0.25, 0.25, fast=True)
    noise = torch.zeros(1, 4, 2, 4, 4)
    for i in range(iterations):
        _, timesteps = pipe._apply_free_init(noise, i, total, "cpu", torch.float32, torch.Generator())
        assert coarse_to_fine_steps(total, i, iterations) == len(timesteps)
    assert coarse_to_fine_steps(total, iterations - 1, iterations) == total


def test_coarse_to_fine_known_values() -> None:
    assert [coarse_to_fine_steps(25, i, 3) for i in range(3)] == [8, 16, 25]
    assert [coarse_to_fine_steps(2, i, 5) for i in range(5)] == [1, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="iteration 3 of 3"):
        coarse_to_fine_steps(25, 3, 3)


@pytest.mark.parametrize(
    "call,field,value",
    [
        (lambda: low_pass_filter(4, 4, 4, "median"), "freeinit_filter", "'median'"),
        (lambda: low_pass_filter(4, 4, 4, ds=1.5), "freeinit_ds", "1.5"),
        (lambda: low_pass_filter(4, 4, 4, dt=-0.125), "freeinit_dt", "-0.125"),
        (lambda: low_pass_filter(4, 4, 4, ds=float("nan")), "freeinit_ds", "nan"),
    ],
)
def test_errors_name_the_field_and_value(call, field, value) -> None:
    with pytest.raises(ValueError, match=rf"^{field} is {value}; allowed: "):
        call()


class RecordingSampler:
    """sample(start, steps) that records its inputs and returns a fixed function of ``start``."""

    def __init__(self) -> None:
        self.starts: list[torch.Tensor] = []
        self.steps: list[int] = []

    def __call__(self, start: torch.Tensor, steps: int) -> torch.Tensor:
        self.starts.append(start.clone())
        self.steps.append(steps)
        return torch.tanh(start) * 0.5 + len(self.starts)


def test_driver_restarts_from_reinit_noise_sigma_form() -> None:
    f, c, h, w = 6, 4, 8, 8
    noise = video(f, c, h, w, 11)
    mask = low_pass_filter(f, h, w, "butterworth", 0.25, 0.25)
    sampler = RecordingSampler()
    sigma = 14.6
    out = free_init(sampler, noise, mask, iterations=3, steps=25, sigma=sigma, coarse_to_fine=True)
    assert sampler.steps == [8, 16, 25]
    assert torch.equal(sampler.starts[0], noise)
    z0 = torch.tanh(sampler.starts[1]) * 0.5 + 2  # what iteration 1 returned
    expected = reinit_noise(z0, noise, noise, mask, sigma=sigma) / sigma
    torch.testing.assert_close(sampler.starts[2], expected, rtol=0, atol=1e-6)
    # fresh noise = the first noise: the start is exactly low(z0)/σ + noise
    low = mix_frequencies(z0, torch.zeros_like(z0), mask)
    torch.testing.assert_close(sampler.starts[2], low / sigma + noise, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, torch.tanh(sampler.starts[2]) * 0.5 + 3)


def test_driver_draws_fresh_noise_per_iteration_in_vp_form() -> None:
    f, c, h, w = 4, 4, 8, 8
    noise = video(f, c, h, w, 12)
    mask = low_pass_filter(f, h, w, "gaussian", 0.5, 0.5)
    drawn = {i: video(f, c, h, w, 100 + i) for i in (1, 2)}
    sampler = RecordingSampler()
    free_init(sampler, noise, mask, iterations=3, steps=4, alpha_bar=0.0047, fresh_noise=drawn.__getitem__)
    assert sampler.steps == [4, 4, 4]
    z0 = torch.tanh(sampler.starts[0]) * 0.5 + 1
    expected = reinit_noise(z0, noise, drawn[1], mask, alpha_bar=0.0047)
    torch.testing.assert_close(sampler.starts[1], expected, rtol=0, atol=0)


def test_one_iteration_is_plain_sampling() -> None:
    noise = video(4, 4, 8, 8, 13)
    sampler = RecordingSampler()
    out = free_init(sampler, noise, low_pass_filter(4, 8, 8), iterations=1, steps=9)
    assert sampler.steps == [9] and torch.equal(out, torch.tanh(noise) * 0.5 + 1)
