"""The noise seam around the WebUI's ``p.sample``: FreeNoise reschedules every draw, FreeInit runs
the WebUI's sampling ``iters`` times from re-initialised noise with hires fix and the mask only
in the last pass, and every attribute it sets for a pass is put back. Also the parameters these
features add: validation, infotext and the motion strength a job gets."""

from __future__ import annotations

import base64
import dataclasses
import io
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from motion_module.freeinit import low_pass_filter, reinit_noise, sigma_of
from motion_module.freenoise import reschedule_noise
from motion_module.params import NoiseType, infotext_value, parse_params, read_infotext
from scripts.animatediff_webui import args as ad_args
from scripts.animatediff_webui import job as jobs
from scripts.animatediff_webui import noise
from scripts.animatediff_webui.patch_session import PatchSession

FRAMES, CONTEXT = 12, 4


class KDiffusionSampler:
    pass


class TimestepSampler:
    pass


@pytest.fixture(autouse=True)
def samplers(monkeypatch):
    module = types.ModuleType("modules.sd_samplers_kdiffusion")
    module.KDiffusionSampler = KDiffusionSampler
    monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
    monkeypatch.setitem(sys.modules, "modules.sd_samplers_kdiffusion", module)


class Rng:
    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(seed)
        self.draws = 0

    def next(self):
        self.draws += 1
        return torch.randn(FRAMES, 4, 8, 8, generator=self.generator)


class State:
    def __init__(self):
        self.job_count, self.job_no, self.textinfo = 1, 0, ""

    def nextjob(self):
        self.job_no += 1


def make_p(sampler=KDiffusionSampler, **extra):
    alphas = torch.linspace(0.9991, 0.0047, 1000)
    fields = dict(
        rng=Rng(),
        seeds=[7] * FRAMES,
        steps=8,
        enable_hr=True,
        sd_model=SimpleNamespace(alphas_cumprod=alphas),
    )
    fields["sampler"] = sampler()
    return SimpleNamespace(**(fields | extra))


def request(**values):
    return parse_params({"enable": True, "video_length": FRAMES, "batch_size": CONTEXT} | values)


def test_freenoise_reschedules_every_draw_and_gives_the_generator_back():
    p, params = make_p(), request(noise_type="FreeNoise")
    real = p.rng
    seen = []
    out = noise.sample(p, params, PatchSession(), State(), lambda: seen.append(p.rng.next()) or "samples")
    assert out == "samples" and p.rng is real
    expected = reschedule_noise(Rng().next(), NoiseType.FREENOISE, CONTEXT, 7)
    assert torch.equal(seen[0], expected)
    assert torch.equal(seen[0][CONTEXT : 2 * CONTEXT].sort(0).values, seen[0][:CONTEXT].sort(0).values)


def test_default_noise_and_short_videos_leave_sampling_alone():
    assert not noise.active(request())
    assert not noise.active(request(noise_type="FreeNoise", video_length=CONTEXT))  # one window
    assert noise.active(request(noise_type="FreeNoise")) and noise.active(request(freeinit_enable=True))


def run_freeinit(p, params, state=None):
    passes = []

    def run():
        start = p.rng.next()
        passes.append(
            SimpleNamespace(start=start, steps=p.steps, hr=p.enable_hr, mask=getattr(p, "mask", None))
        )
        return 0.5 * start + torch.full_like(start, 0.1 * len(passes))  # a made-up z0 per pass

    session, state = PatchSession(), state or State()
    result = noise.sample(p, params, session, state, run)
    return passes, result, session, state


def test_freeinit_runs_every_iteration_from_reinitialised_noise():
    p = make_p()
    params = request(freeinit_enable=True, freeinit_iters=3, freeinit_filter="gaussian", freeinit_ds=0.5)
    real_rng = p.rng
    passes, result, session, state = run_freeinit(p, params)
    assert len(passes) == 3 and real_rng.draws == 1
    first = Rng().next()
    assert torch.equal(passes[0].start, first)
    low = low_pass_filter(FRAMES, 8, 8, "gaussian", 0.5, 0.25)
    sigma = sigma_of(float(p.sd_model.alphas_cumprod[-1]))
    z0 = 0.5 * first + 0.1
    torch.testing.assert_close(passes[1].start, reinit_noise(z0, first, first, low, sigma=sigma) / sigma)
    assert not torch.allclose(passes[1].start, first)
    assert [x.hr for x in passes] == [False, False, True] and [x.steps for x in passes] == [8, 8, 8]
    torch.testing.assert_close(result, 0.5 * passes[2].start + 0.3)
    assert p.rng is real_rng and p.enable_hr is True and p.steps == 8
    assert (state.job_count, state.job_no) == (3, 2)  # each iteration its own phase
    session.close()
    assert (state.job_count, state.job_no) == (1, 0)


def test_freeinit_coarse_to_fine_and_the_inpaint_mask_in_the_last_pass_only():
    mask = torch.ones(1, 8, 8)
    p = make_p(mask=mask, nmask=1 - mask, init_latent=torch.zeros(FRAMES, 4, 8, 8))
    p.sampler.get_sigmas = lambda p_, steps: torch.linspace(10, 0, steps + 1)
    base = request(freeinit_enable=True, freeinit_iters=4)
    params = dataclasses.replace(base, freeinit=dataclasses.replace(base.freeinit, coarse_to_fine=True))
    steps_module = types.ModuleType("modules.sd_samplers_common")
    steps_module.setup_img2img_steps = lambda p_: (8, 4)
    sys.modules["modules.sd_samplers_common"] = steps_module
    try:
        passes, *_ = run_freeinit(p, params)
    finally:
        del sys.modules["modules.sd_samplers_common"]
    assert [x.steps for x in passes] == [2, 4, 6, 8]
    assert [x.mask is mask for x in passes] == [False, False, False, True]
    assert p.mask is mask and p.steps == 8


def test_freeinit_in_img2img_needs_a_k_diffusion_sampler():
    p = make_p(sampler=TimestepSampler, init_latent=torch.zeros(FRAMES, 4, 8, 8), sampler_name="DDIM")
    with pytest.raises(ValueError, match="freeinit_enable = True .* 'DDIM'"):
        run_freeinit(p, request(freeinit_enable=True))


def test_freeinit_with_a_timestep_sampler_uses_the_unit_variance_form():
    p = make_p(sampler=TimestepSampler)
    passes, *_ = run_freeinit(p, request(freeinit_enable=True, freeinit_iters=2))
    first = Rng().next()
    low = low_pass_filter(FRAMES, 8, 8, "butterworth", 0.25, 0.25)
    a = float(p.sd_model.alphas_cumprod[-1])
    torch.testing.assert_close(
        passes[1].start, reinit_noise(0.5 * first + 0.1, first, first, low, alpha_bar=a)
    )


def png_base64(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_motion_mask_becomes_the_jobs_motion_strength():
    mask = Image.new("L", (8, 4), 0)
    mask.paste(255, (4, 0, 8, 4))
    strength = jobs.motion_strength(
        request(motion_scale=1.5, motion_mask=png_base64(mask), motion_mask_min=0.2)
    )
    assert strength.scale == 1.5 and strength.mask_min == 0.2
    assert (
        strength.mask.shape == (4, 8) and strength.mask[:, :4].max() == 0 and strength.mask[:, 4:].min() == 1
    )
    assert jobs.motion_strength(request()).is_identity
    with pytest.raises(ValueError, match="motion_mask is not a readable image"):
        jobs.motion_strength(request(motion_mask="not an image"))


def test_new_fields_reach_the_infotext_only_when_they_matter_and_paste_back():
    plain = infotext_value(request())
    assert "freeinit_filter" not in plain and "noise_type" not in plain and "motion_scale" not in plain
    params = request(freeinit_enable=True, freeinit_iters=4, noise_type="FreeNoise", motion_scale=0.5)
    fields = read_infotext(infotext_value(params))
    assert (fields["freeinit_iters"], fields["noise_type"], fields["motion_scale"]) == (
        "4",
        "freenoise",
        "0.5",
    )
    back = parse_params({"enable": True} | fields, ignore_unknown=True)
    assert (back.freeinit, back.noise_type, back.motion.scale) == (params.freeinit, params.noise_type, 0.5)
    # Pasting an infotext without them sets them back to their defaults in the panel.
    pasted = ad_args.pasted_values({"AnimateDiff": plain})
    assert (pasted["noise_type"], pasted["motion_scale"], pasted["freeinit_iters"]) == ("default", 1.0, 3)
