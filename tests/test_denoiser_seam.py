"""The window seam on fakes shaped like WebUI v1.10.1's CFG denoiser and its inner models.

``FakeCFG.forward`` lays out rows as sd_samplers_cfg_denoiser.CFGDenoiser.forward does (cond rows,
then uncond rows; one call when batched with equal lengths, N-row calls otherwise, uncond dropped
when skipped) and calls ``self.inner_model(x, sigma, cond={...})``. The fake UNet is a per-row
function of every input, so a windowed run equals an unwindowed run exactly if and only if every
per-frame input reached the right row.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from motion_module.frames import FrameLayout
from motion_module.params import AnimateDiffParams, WindowMode, WindowParams
from motion_module.windows import PerFrameInputs, schedule
from scripts.animatediff_webui import denoiser as seam
from scripts.animatediff_webui.patch_session import PatchSession

FRAMES = 22
PARAMS = WindowParams(context=8, overlap=2, frame_budget=16)


def ad(window: WindowParams) -> AnimateDiffParams:
    """A job's parameters: FRAMES frames sampled in ``window``."""
    return AnimateDiffParams(video_length=FRAMES, window=window)


class FakeUNet:
    """Per-row function of x, t, text, vector, image cond and a ControlNet-like hint."""

    def __init__(self, layout: FrameLayout, hint: dict | None = None):
        self.layout, self.hint, self.windows = layout, hint, []

    def __call__(self, x, t, cond):
        text = cond["crossattn"] if "crossattn" in cond else cond["c_crossattn"][0]
        image = cond["c_concat"][0]
        y = torch.tanh(x) * (1 + t.float().view(-1, 1, 1, 1) / 1000) + text.mean((1, 2)).view(-1, 1, 1, 1)
        y = y + image.mean(1, keepdim=True)
        if "vector" in cond:
            y = y * cond["vector"].sum(1).view(-1, 1, 1, 1)
        if self.hint is not None:
            y = y - self.hint["hint"].view(-1, 1, 1, 1)
        return self.layout.run(self._temporal, y)

    def _temporal(self, v, frames):
        self.windows.append((v.shape[0], frames))
        return v


class FakeKDiffusionInner(nn.Module):  # like k_diffusion.external.CompVisDenoiser
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, input, sigma, **kwargs):
        return self.unet(input, sigma * 10, kwargs["cond"])


class FakeTimestepsInner(nn.Module):  # like sd_samplers_timesteps.CompVisTimestepsDenoiser
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, input, timesteps, **kwargs):
        return self.unet(input, timesteps, kwargs["cond"])


class FakeCFG:
    def __init__(self, inner_factory, batch_cond_uncond=True, skip_uncond=False):
        self.model_wrap, self.step = None, 0
        self.inner_factory, self.batch, self.skip_uncond = inner_factory, batch_cond_uncond, skip_uncond

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = self.inner_factory()
        return self.model_wrap

    def forward(self, x, sigma, uncond, cond, image_cond):
        n = x.shape[0]
        sdxl = isinstance(cond, dict)
        make = (
            (lambda c, i: {**c, "c_concat": [i]})
            if sdxl
            else (lambda c, i: {"c_crossattn": [c], "c_concat": [i]})
        )
        x_in, sigma_in, image_in = (
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            torch.cat([image_cond, image_cond]),
        )
        text, untext = (cond["crossattn"], uncond["crossattn"]) if sdxl else (cond, uncond)
        if self.skip_uncond:
            x_in, sigma_in = x_in[:n], sigma_in[:n]
        cat = (
            (lambda a, b: {k: torch.cat([a[k], b[k]]) for k in a})
            if sdxl
            else (lambda a, b: torch.cat([a, b]))
        )
        sub = (lambda c, a, b: {k: v[a:b] for k, v in c.items()}) if sdxl else (lambda c, a, b: c[a:b])
        if text.shape[1] == untext.shape[1] or self.skip_uncond:
            cond_in = cond if self.skip_uncond else cat(cond, uncond)
            if self.batch:
                x_out = self.inner_model(x_in, sigma_in, cond=make(cond_in, image_in[: x_in.shape[0]]))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_in.shape[0], n):
                    x_out[a : a + n] = self.inner_model(
                        x_in[a : a + n],
                        sigma_in[a : a + n],
                        cond=make(sub(cond_in, a, a + n), image_in[a : a + n]),
                    )
        else:  # unequal lengths: cond rows first (chunks of 2N or N), then uncond separately
            x_out = torch.zeros_like(x_in)
            x_out[:n] = self.inner_model(x_in[:n], sigma_in[:n], cond=make(cond, image_in[:n]))
            x_out[n:] = self.inner_model(x_in[n:], sigma_in[n:], cond=make(uncond, image_in[n:]))
        if self.skip_uncond:
            x_out = torch.cat([x_out, x_out])
        self.step += 1
        return x_out[n:] + 7.0 * (x_out[:n] - x_out[n:])


def inputs(sdxl: bool, unequal: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(FRAMES, 4, 3, 3, generator=gen)
    sigma = torch.rand(FRAMES, generator=gen) + 0.1
    cond = torch.randn(FRAMES, 4, 6, generator=gen)  # per-frame rows, as prompt travel makes them
    uncond = torch.randn(FRAMES, 8 if unequal else 4, 6, generator=gen)
    image = torch.randn(FRAMES, 5, 3, 3, generator=gen)
    if sdxl:
        cond = {"crossattn": cond, "vector": torch.randn(FRAMES, 9, generator=gen)}
        uncond = {"crossattn": uncond, "vector": torch.randn(FRAMES, 9, generator=gen)}
    return x, sigma, uncond, cond, image


LAYOUTS = {
    "batched": {},
    "not batched": {"batch_cond_uncond": False},
    "unequal lengths": {"unequal": True},
    "uncond skipped": {"skip_uncond": True},
}


@pytest.mark.parametrize("inner_cls", [FakeKDiffusionInner, FakeTimestepsInner])
@pytest.mark.parametrize("sdxl", [False, True])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("mode", list(WindowMode))
def test_windowed_sampling_routes_every_input(inner_cls, sdxl, layout_name, mode) -> None:
    options = dict(LAYOUTS[layout_name])
    unequal = options.pop("unequal", False)
    args = inputs(sdxl, unequal)
    layout = FrameLayout()
    hint_rows = (
        FRAMES
        if options.get("batch_cond_uncond", True) is False or unequal or options.get("skip_uncond")
        else 2 * FRAMES
    )
    hint = {"hint": torch.randn(hint_rows)}
    reference_unet = FakeUNet(layout, dict(hint))
    reference = FakeCFG(lambda: inner_cls(reference_unet), **options)
    unet = FakeUNet(layout, hint)
    cfg = FakeCFG(lambda: inner_cls(unet), **options)
    registry = PerFrameInputs()
    full_hint = hint["hint"]
    registry.add("controlnet hint", lambda: hint["hint"], lambda v: hint.__setitem__("hint", v))
    params = WindowParams(context=8, overlap=2, frame_budget=16, mode=mode)

    progress = []
    with PatchSession() as session:
        seam.install(
            session,
            cfg,
            ad(params),
            layout,
            registry,
            between=lambda: None,
            progress=lambda *k: progress.append(k),
        )
        for step in range(3):
            progress.clear()
            with layout.using(FRAMES):
                expected = reference.forward(*args)
            unet.windows.clear()
            got = cfg.forward(*args)
            assert torch.equal(got, expected)
            assert hint["hint"] is full_hint and layout.frames == 0
            windows = schedule(FRAMES, step, params)
            if mode == WindowMode.UNET:  # the motion module saw only scheduled windows
                assert {frames for _, frames in unet.windows} == {8}
                assert sum(rows for rows, _ in unet.windows) % (len(windows) * 8) == 0
                # one report per UNet call, numbered 1..n of n (again for a separate uncond call)
                n = progress[0][1]
                assert progress == [(k, n) for k in range(1, n + 1)] * (len(progress) // n)
            else:
                assert {rows % 8 for rows, _ in unet.windows} == {0} and unet.windows
    assert "forward" not in cfg.model_wrap.__dict__


def test_install_is_exactly_undone_and_idempotent() -> None:
    layout = FrameLayout()
    cfg = FakeCFG(lambda: FakeKDiffusionInner(FakeUNet(layout)))
    session = PatchSession()
    first = seam.install(session, cfg, ad(PARAMS), layout)
    assert seam.install(session, cfg, ad(PARAMS), layout) is first  # img2img reuses the sampler
    assert len(session.step_names) == 1
    second_cfg = FakeCFG(lambda: FakeKDiffusionInner(FakeUNet(layout)))  # hires pass: new sampler
    seam.install(session, second_cfg, ad(PARAMS), layout)
    with pytest.raises(RuntimeError, match="earlier AnimateDiff job"):
        seam.install(PatchSession(), cfg, ad(PARAMS), layout)
    session.close()
    for c in (cfg, second_cfg):
        assert "forward" not in c.model_wrap.__dict__
        assert c.model_wrap.forward.__func__ is FakeKDiffusionInner.forward


def test_a_forward_set_before_us_is_restored() -> None:
    layout = FrameLayout()
    cfg = FakeCFG(lambda: FakeKDiffusionInner(FakeUNet(layout)))
    theirs = lambda x, sigma, **kw: x  # noqa: E731
    cfg.inner_model.forward = theirs
    with PatchSession() as session:
        seam.install(session, cfg, ad(PARAMS), layout)
        assert cfg.model_wrap.forward is not theirs
    assert cfg.model_wrap.forward is theirs


def test_wrapped_after_us_becomes_a_pass_through() -> None:
    layout = FrameLayout()
    unet = FakeUNet(layout)
    cfg = FakeCFG(lambda: FakeKDiffusionInner(unet))
    session = PatchSession()
    seam.install(session, cfg, ad(PARAMS), layout)
    ours = cfg.model_wrap.forward
    cfg.model_wrap.forward = lambda *a, **kw: ours(*a, **kw)  # another extension chains over us
    session.close()
    x, sigma, uncond, cond, image = inputs(False, False)
    with layout.using(2 * FRAMES):
        cfg.forward(x, sigma, uncond, cond, image)  # would fail inside if still windowed
    assert unet.windows == [(2 * FRAMES, 2 * FRAMES)]


def test_interrupt_raises_the_webui_exception(monkeypatch) -> None:
    class InterruptedException(BaseException):
        pass

    state = types.SimpleNamespace(interrupted=False, skipped=False, sampling_steps=20, textinfo="")
    modules = types.ModuleType("modules")
    modules.shared = types.SimpleNamespace(state=state)
    modules.sd_samplers_common = types.SimpleNamespace(InterruptedException=InterruptedException)
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.shared", modules.shared)
    monkeypatch.setitem(sys.modules, "modules.sd_samplers_common", modules.sd_samplers_common)

    layout = FrameLayout()
    calls = []

    class CountingUNet(FakeUNet):
        def __call__(self, x, t, cond):
            calls.append(x.shape[0])
            state.interrupted = True  # the user presses Interrupt during the first window
            return super().__call__(x, t, cond)

    cfg = FakeCFG(lambda: FakeKDiffusionInner(CountingUNet(layout)))
    with PatchSession() as session:
        seam.install(session, cfg, ad(WindowParams(context=8, overlap=2, frame_budget=0)), layout)
        with pytest.raises(InterruptedException):
            cfg.forward(*inputs(False, False))
        # the progress text named the window that ran (the default progress report)
        assert state.textinfo.startswith("AnimateDiff: step 1/20 · window 1/")
    assert len(calls) == 1 and layout.frames == 0
