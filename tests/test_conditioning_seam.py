"""Prompt-travel host seam against fakes shaped like the WebUI's objects: ``p``, the conditioning
containers of modules/prompt_parser.py, and CFGDenoiserParams. A small stand-in for
``CFGDenoiser.forward`` reproduces the parts that matter: rows stacked per frame (shorter conds
padded by repeating the last token), uncond stacked as-is (different lengths crash, as in the
WebUI), the callback, and the "one UNet call only when lengths match" rule."""

from __future__ import annotations

import logging
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

from motion_module.params import ClosedLoop, parse_params
from motion_module.prompt_travel import PromptTravelError, slerp
from scripts.animatediff_webui import conditioning
from scripts.animatediff_webui.patch_session import PatchSession

D = 8
ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules, self.weight = schedules, weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def encode(prompt: str) -> torch.Tensor:
    """Deterministic fake text encoder: 3 chunks of 77 tokens for prompts containing "long"."""
    gen = torch.Generator().manual_seed(sum(map(ord, prompt)) % 10_000)
    return torch.randn(231 if "long" in prompt else 77, D, generator=gen)


def make_p(prompt, negative="lowres", frames=8, videos=1, **extra):
    model = SimpleNamespace(cond_stage_model_empty_prompt=torch.full((1, 77, D), 0.5))
    fields = dict(prompt=prompt, negative_prompt=negative, batch_size=frames, n_iter=videos, sd_model=model)
    fields.update(iteration=0, is_hr_pass=False, styles=[], enable_hr=False)
    fields.update(extra)
    return SimpleNamespace(**fields)


def setup_conds(p, batch=0):
    """What setup_prompts + setup_conds produce for one batch (identical prompts share a list)."""
    lo, hi = batch * p.batch_size, (batch + 1) * p.batch_size
    prompts = p.prompt if isinstance(p.prompt, list) else [p.prompt] * p.batch_size * p.n_iter
    negatives = (
        p.negative_prompt if isinstance(p.negative_prompt, list) else [p.negative_prompt] * len(prompts)
    )
    shared_c, shared_uc = {}, {}
    c_rows = [
        [
            ComposableScheduledPromptConditioning(
                shared_c.setdefault(x, [ScheduledPromptConditioning(20, encode(x))])
            )
        ]
        for x in prompts[lo:hi]
    ]
    uc = [shared_uc.setdefault(x, [ScheduledPromptConditioning(20, encode(x))]) for x in negatives[lo:hi]]
    return MulticondLearnedConditioning((hi - lo,), c_rows), uc


def _stack_like_webui(tensors):
    length = max(t.shape[0] for t in tensors)
    return torch.stack([torch.cat([t, t[-1:].repeat(length - t.shape[0], 1)]) for t in tensors])


def cfg_forward(session, p, c, uc):
    """Stand-in for CFGDenoiser.forward up to the UNet call; returns (cond, uncond, calls)."""
    tensor = _stack_like_webui([row[0].schedules[0].cond for row in c.batch])
    uncond = torch.stack([schedule[0].cond for schedule in uc])  # the WebUI's zeros-then-assign crashes too
    params = SimpleNamespace(text_cond=tensor, text_uncond=uncond, denoiser=SimpleNamespace(p=p))
    conditioning.on_cfg_denoiser(getattr(session, "travel", None), params)
    calls = 1 if params.text_cond.shape[1] == params.text_uncond.shape[1] else 2
    return params.text_cond, params.text_uncond, calls


class JobSession(PatchSession):
    """A session with the travel plan beside it, as a job holds both."""

    travel = None


def travel_params(loop=ClosedLoop.R_MINUS_P, context=16, frames=None, interpolation=None):
    request = {"closed_loop": loop.value, "batch_size": context}
    if interpolation is not None:
        request["travel_interpolation"] = interpolation
    return parse_params(request | ({"video_length": frames} if frames else {}))


def prepare(p, loop=ClosedLoop.R_MINUS_P, context=16, **kwargs):
    session = JobSession()
    params = travel_params(loop, context, frames=p.batch_size, **kwargs)
    session.travel = conditioning.prepare_prompts(p, session, params)
    return session


def test_prepare_sets_per_frame_lists_and_close_restores():
    prompt = "1girl, solo\n0: closed mouth\n4: open mouth\nsmile"
    p = make_p(prompt, frames=8, videos=2)
    session = prepare(p)
    assert (
        p.prompt
        == ["1girl, solo, closed mouth, smile"] * 4
        + ["1girl, solo, open mouth, smile"] * 4
        + ["1girl, solo, closed mouth, smile"] * 4
        + ["1girl, solo, open mouth, smile"] * 4
    )
    assert len(set(p.prompt)) == 2  # the WebUI encodes each distinct prompt once
    assert p.negative_prompt == "lowres"
    session.close()
    assert p.prompt == prompt


def test_bad_prompt_is_refused_before_anything_changes():
    p = make_p("0: a\n9: b", frames=8)
    session = PatchSession()
    with pytest.raises(PromptTravelError, match="'9: b'"):
        conditioning.prepare_prompts(p, session, travel_params(ClosedLoop.N, frames=8))
    assert p.prompt == "0: a\n9: b" and session.step_names == []


def test_plain_prompts_leave_p_alone():
    p = make_p("1girl, solo")
    assert conditioning.prepare_prompts(p, PatchSession(), travel_params(ClosedLoop.N)) is None
    assert p.prompt == "1girl, solo"


def test_keyframes_and_negatives_of_1_and_3_chunks_make_one_coherent_batch():
    p = make_p("0: short\n4: long one", negative="0: neg\n6: long neg", frames=8)
    session = prepare(p)
    c, uc = setup_conds(p)
    with pytest.raises(RuntimeError):  # what the WebUI does with per-frame negatives of two lengths
        cfg_forward(PatchSession(), p, c, uc)
    conditioning.pad_conditioning(session, p, c, uc)
    cond, uncond, calls = cfg_forward(session, p, c, uc)
    assert calls == 1 and cond.shape == uncond.shape == (8, 231, D)
    empty = p.sd_model.cond_stage_model_empty_prompt[0]
    short, long = encode("short"), encode("long one")
    assert torch.equal(cond[0, :77], short) and torch.equal(cond[0, 77:154], empty)
    assert torch.equal(cond[4], long)
    padded_short = torch.cat([short, empty, empty])
    torch.testing.assert_close(cond[2], slerp(padded_short, long, 0.5))
    assert torch.equal(cond[7], long)
    torch.testing.assert_close(
        uncond[3], slerp(torch.cat([encode("neg"), empty, empty]), encode("long neg"), 0.5)
    )
    # the cached WebUI lists get their original entries back
    session.close()
    assert c.batch[0][0].schedules[0].cond.shape == (77, D) and uc[0][0].cond.shape == (77, D)


def test_long_prompt_short_negative_without_travel_is_one_call():
    # pain point 3 ("two unrelated halves"): no travel at all, prompt over 75 tokens
    p = make_p("a long prompt", negative="short")
    session = PatchSession()
    c, uc = setup_conds(p)
    conditioning.pad_conditioning(session, p, c, uc)
    assert cfg_forward(session, p, c, uc)[2] == 1
    # and even if the conds reached the denoiser unpadded (refiner swap), the callback pads
    assert cfg_forward(PatchSession(), p, *setup_conds(p))[2] == 1


def test_interpolation_is_computed_once_per_pass_and_redone_when_keys_change():
    p = make_p("0: a\n4: b", frames=8)
    session = prepare(p)
    c, uc = setup_conds(p)
    first = cfg_forward(session, p, c, uc)[0]
    assert cfg_forward(session, p, c, uc)[0] is first
    c.batch[4][0].schedules[0] = ScheduledPromptConditioning(20, encode("edited"))
    assert cfg_forward(session, p, c, uc)[0] is not first


def test_closed_loop_r_plus_p_travels_back_when_frames_exceed_the_context():
    p = make_p("0: a\n4: b", frames=8)
    session = prepare(p, loop=ClosedLoop.R_PLUS_P, context=4)
    cond = cfg_forward(session, p, *setup_conds(p))[0]
    torch.testing.assert_close(cond[6], slerp(encode("b"), encode("a"), 0.5))
    p2 = make_p("0: a\n4: b", frames=8)
    session2 = prepare(p2, loop=ClosedLoop.R_PLUS_P, context=16)
    assert torch.equal(cfg_forward(session2, p2, *setup_conds(p2))[0][6], encode("b"))


def test_controlnet_marker_row_survives_and_is_not_interpolated():
    p = make_p("0: a\n4: b", frames=8)
    session = prepare(p)
    c, uc = setup_conds(p)
    for row in c.batch:  # what ControlNet's sample wrapper does before sampling
        s = row[0].schedules
        if s[0].cond.shape[0] == 77:
            s[0] = ScheduledPromptConditioning(20, torch.cat([torch.full((1, D), 1024.0), s[0].cond]))
    cond = cfg_forward(session, p, c, uc)[0]
    assert cond.shape == (8, 78, D)
    assert torch.all(cond[:, 0] == 1024.0)
    torch.testing.assert_close(cond[2, 1:], slerp(encode("a"), encode("b"), 0.5))


def test_sdxl_dict_conditioning_keeps_its_type_and_interpolates_vector():
    p = make_p("0: a\n2: b", frames=4)
    session = prepare(p)
    vec = {x: torch.randn(12) for x in ("a", "b", "lowres")}
    rows = [p.prompt[i] for i in range(4)]
    tensor = DictWithShape(
        {"crossattn": torch.stack([encode(x) for x in rows]), "vector": torch.stack([vec[x] for x in rows])}
    )
    uncond = DictWithShape(
        {"crossattn": torch.stack([encode("lowres")] * 4), "vector": torch.stack([vec["lowres"]] * 4)}
    )
    params = SimpleNamespace(text_cond=tensor, text_uncond=uncond, denoiser=SimpleNamespace(p=p))
    conditioning.on_cfg_denoiser(getattr(session, "travel", None), params)
    assert isinstance(params.text_cond, DictWithShape) and params.text_cond.shape == (4, 77, D)
    torch.testing.assert_close(params.text_cond["vector"][1], slerp(vec["a"], vec["b"], 0.5))
    assert torch.equal(params.text_cond["vector"][2], vec["b"])


def test_and_prompts_warn_once_and_keep_per_frame_rows(caplog):
    p = make_p("0: a AND b\n2: c", frames=4)
    session = prepare(p)
    rows = torch.randn(6, 77, D)  # 6 cond rows for 4 frames
    params = SimpleNamespace(text_cond=rows, text_uncond=torch.randn(4, 77, D), denoiser=SimpleNamespace(p=p))
    with caplog.at_level(logging.WARNING, logger="animatediff"):
        conditioning.on_cfg_denoiser(getattr(session, "travel", None), params)
        conditioning.on_cfg_denoiser(getattr(session, "travel", None), params)
    assert params.text_cond is rows
    assert sum("AND" in r.message for r in caplog.records) == 1


def test_hires_pass_uses_its_own_travel_prompt():
    p = make_p("0: a\n2: b", frames=4, enable_hr=True, hr_prompt="0: x\n3: y", hr_negative_prompt="")
    session = prepare(p)
    assert p.hr_prompt == ["x", "x", "x", "y"]
    p.is_hr_pass = True
    rows = torch.stack([encode(x) for x in p.hr_prompt])
    params = SimpleNamespace(
        text_cond=rows, text_uncond=torch.stack([encode("lowres")] * 4), denoiser=SimpleNamespace(p=p)
    )
    conditioning.on_cfg_denoiser(getattr(session, "travel", None), params)
    torch.testing.assert_close(params.text_cond[1], slerp(encode("x"), encode("y"), 1 / 3))
    session.close()
    assert p.hr_prompt == "0: x\n3: y" and p.hr_negative_prompt == ""


def test_infotext_gets_the_original_multiline_prompt():
    prompt, negative = "h\n0: a\n2: b", "0: n\n1: m"
    p = make_p(prompt, negative=negative, frames=4, videos=2)
    session = prepare(p)
    p.all_prompts, p.all_negative_prompts = list(p.prompt), list(p.negative_prompt)
    conditioning.restore_infotext_prompts(p, session.travel, 4, batch_number=1)
    assert p.prompts == [prompt] * 4 and p.negative_prompts == [negative] * 4
    assert p.all_prompts[4:] == [prompt] * 4 and p.all_prompts[0] == "h, a"


def test_plain_hires_prompt_does_not_travel_in_the_hires_pass():
    p = make_p("0: a\n2: b", frames=4, enable_hr=True, hr_prompt="plain", hr_negative_prompt="")
    session = prepare(p)
    assert p.hr_prompt == "plain"
    p.is_hr_pass = True
    rows = torch.stack([encode("plain")] * 4)
    params = SimpleNamespace(
        text_cond=rows, text_uncond=torch.stack([encode("lowres")] * 4), denoiser=SimpleNamespace(p=p)
    )
    conditioning.on_cfg_denoiser(getattr(session, "travel", None), params)
    assert params.text_cond is rows
