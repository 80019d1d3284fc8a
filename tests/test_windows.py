"""Window schedules, fusion and the windowed denoiser (engine side, fakes plus a tiny real UNet)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from motion_module.frames import FrameLayout
from motion_module.params import (
    AnimateDiffParams,
    ClosedLoop,
    Fusion,
    ParamsError,
    WindowMode,
    WindowParams,
    check_fits_module,
    parse_params,
)
from motion_module.window_fusion import FusionBuffer, fusion_weights
from motion_module.windows import (
    PerFrameInputs,
    WindowedDenoiser,
    ordered_halving,
    schedule,
)

LOOPS = list(ClosedLoop)


def span(a: int, b: int, step: int = 1) -> tuple[int, ...]:
    return tuple(range(a, b + 1, step))


def wrap(*parts: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(i for part in parts for i in part)


# --- schedules --------------------------------------------------------------------------------


def test_ordered_halving_is_van_der_corput() -> None:
    assert [ordered_halving(s) for s in range(8)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


@pytest.mark.parametrize(
    "frames,loop,step,expected",
    [  # the predecessor's windows (docs/behaviour.md; context 16, overlap 4)
        (24, ClosedLoop.R_MINUS_P, 0, [span(0, 15), wrap(span(12, 23), span(0, 3))]),
        (24, ClosedLoop.R_MINUS_P, 2, [span(6, 21), wrap(span(18, 23), span(0, 9))]),
        (24, ClosedLoop.N, 0, [span(0, 15), span(8, 23)]),
        (24, ClosedLoop.N, 2, [span(6, 21), span(8, 23), span(0, 15)]),
        (40, ClosedLoop.R_PLUS_P, 1, [span(20, 35), wrap(span(32, 39), span(0, 7)), span(4, 19)]),
        (40, ClosedLoop.A, 0, [span(0, 15), span(12, 27), span(24, 39), wrap(span(36, 39), span(0, 11))]),
        (40, ClosedLoop.N, 1, [span(20, 35), span(24, 39), span(0, 15), span(4, 19)]),
        (40, ClosedLoop.N, 2, [span(10, 25), span(22, 37), span(24, 39), span(0, 15)]),
    ],
)
def test_schedule_matches_the_predecessor(frames, loop, step, expected) -> None:
    assert schedule(frames, step, WindowParams(overlap=4, closed_loop=loop)) == expected


def test_stride_adds_dilated_windows() -> None:
    params = WindowParams(overlap=4, stride=4)  # capped to 2 levels at 32 frames
    assert schedule(32, 0, params) == [
        span(0, 15),
        span(12, 27),
        wrap(span(24, 31), span(0, 7)),
        span(0, 30, 2),
    ]
    assert schedule(32, 1, params)[-1] == wrap(span(17, 31, 2), span(1, 15, 2))
    assert schedule(16, 0, params) == [span(0, 15)]  # frames <= context: stride has no effect


def test_fewer_frames_than_context_gives_exactly_the_frames() -> None:
    for loop in LOOPS:
        assert schedule(5, 3, WindowParams(closed_loop=loop)) == [span(0, 4)]


def test_seams_move_between_steps() -> None:
    params = WindowParams(overlap=4)
    assert len({tuple(schedule(64, s, params)) for s in range(4)}) == 4


@settings(max_examples=400, deadline=None)
@given(
    frames=st.integers(1, 300),
    context=st.integers(1, 32),
    stride=st.integers(1, 8),
    overlap_frac=st.floats(0, 1, exclude_max=True),
    loop=st.sampled_from(LOOPS),
    step=st.integers(0, 10_000),
    auto_overlap=st.booleans(),
)
def test_schedule_properties(frames, context, stride, overlap_frac, loop, step, auto_overlap) -> None:
    overlap = -1 if auto_overlap else int(overlap_frac * context)
    params = WindowParams(context=context, stride=stride, overlap=overlap, closed_loop=loop)
    windows = schedule(frames, step, params)
    assert windows == schedule(frames, step, params)  # deterministic
    assert set().union(*map(set, windows)) == set(range(frames))  # every frame covered
    assert len(set(windows)) == len(windows)
    for window in windows:
        assert len(window) == min(frames, context)
        assert len(set(window)) == len(window)  # no frame twice in one window
        assert all(0 <= i < frames for i in window)
        if loop == ClosedLoop.N:
            assert list(window) == sorted(window)  # never wraps across the end
    if frames <= context:
        assert windows == [tuple(range(frames))]


@pytest.mark.parametrize(
    "request_,field,value",
    [
        ({"batch_size": 0}, "batch_size", 0),
        ({"batch_size": 65}, "batch_size", 65),
        ({"batch_size": 16, "overlap": 16}, "overlap", 16),
        ({"overlap": -2}, "overlap", -2),
        ({"stride": 0}, "stride", 0),
        ({"closed_loop": "X"}, "closed_loop", "X"),
    ],
)
def test_window_values_are_refused_by_the_parser_naming_field_and_value(request_, field, value) -> None:
    """The parser is the one place window values are validated; the schedule trusts them."""
    with pytest.raises(ParamsError, match=field) as error:
        parse_params({"enable": True} | request_)
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_frame_budget_setting_is_validated_by_the_parser() -> None:
    base = AnimateDiffParams(window=WindowParams(frame_budget=-1))
    with pytest.raises(ParamsError, match="frame budget = -1"):
        parse_params({"enable": True}, base=base)


def test_context_must_fit_the_modules_position_slots() -> None:
    check_fits_module(parse_params({"batch_size": 24}), 24, "v1")
    with pytest.raises(ParamsError, match="batch_size = 32 .* only 24 position slots"):
        check_fits_module(parse_params({"batch_size": 32}), 24, "mm_sd_v15.ckpt (v1)")


# --- fusion -----------------------------------------------------------------------------------


def test_fusion_weights() -> None:
    assert fusion_weights(4, Fusion.PYRAMID) == [1, 2, 2, 1]
    assert fusion_weights(5, Fusion.PYRAMID) == [1, 2, 3, 2, 1]
    assert fusion_weights(3, Fusion.FLAT) == [1, 1, 1]


@pytest.mark.parametrize("fusion", list(Fusion))
def test_fusion_is_the_normalised_weighted_mean(fusion) -> None:
    frames, windows = 10, [span(0, 5), span(4, 9), wrap(span(8, 9), span(0, 3))]
    like = torch.zeros(2 * frames, 3)
    buffer = FusionBuffer(like, frames)
    expected_num, expected_den = torch.zeros(2 * frames, 3), torch.zeros(2 * frames, 1)
    for n, window in enumerate(windows):
        values = torch.randn(2 * len(window), 3, generator=torch.Generator().manual_seed(n))
        weights = fusion_weights(len(window), fusion)
        buffer.add(window, values, weights)
        for b in range(2):
            for i, frame in enumerate(window):
                expected_num[b * frames + frame] += weights[i] * values[b * len(window) + i]
                expected_den[b * frames + frame] += weights[i]
    torch.testing.assert_close(buffer.result(), expected_num / expected_den, rtol=1e-6, atol=1e-6)
    constant = FusionBuffer(like, frames)
    for window in windows:
        constant.add(window, torch.full((2 * len(window), 3), 0.3), fusion_weights(len(window), fusion))
    assert torch.equal(constant.result(), torch.full((2 * frames, 3), 0.3))  # weights sum to one


# --- the windowed denoiser with fakes ---------------------------------------------------------


def code_tensor(blocks: int, frames: int, *shape: int) -> torch.Tensor:
    """Rows filled with block·1000 + frame, so any row can tell where it came from."""
    codes = torch.tensor([b * 1000 + f for b in range(blocks) for f in range(frames)], dtype=torch.float32)
    return codes.view(-1, *([1] * len(shape))).expand(-1, *shape).clone()


class RoutingChecker:
    """Fake inner model: checks every input row carries the same code, returns a per-row result."""

    def __init__(
        self, layout: FrameLayout, frames: int, params: WindowParams, hint_holder: dict | None = None
    ):
        self.layout, self.frames, self.params, self.hint_holder = layout, frames, params, hint_holder
        self.calls: list[int] = []

    def __call__(self, x, sigma, cond):
        rows = x.shape[0]
        codes = x[:, 0, 0, 0]
        assert torch.equal(sigma, codes)
        c = cond["c_crossattn"][0] if "c_crossattn" in cond else cond["crossattn"]
        assert torch.equal(c[:, 0, 0], codes)
        if "vector" in cond:
            assert torch.equal(cond["vector"][:, 0], codes)
        assert torch.equal(cond["c_concat"][0][:, 0, 0, 0], codes)
        if self.hint_holder is not None:
            assert torch.equal(self.hint_holder["hint"][:, 0], codes)
        length = self.layout.frames
        video = codes.view(-1, length)
        assert torch.equal(video // 1000, (video[:, :1] // 1000).expand_as(video))  # one block per video
        windows = set(schedule(self.frames, 0, self.params))
        assert all(tuple(int(v) for v in row % 1000) in windows for row in video)
        self.calls.append(rows)
        return x * 2 + 1


@pytest.mark.parametrize("budget", [0, 16, 40, 1000])
@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("sdxl", [False, True])
def test_every_per_frame_input_reaches_its_row(budget, blocks, sdxl) -> None:
    frames, layout = 37, FrameLayout()
    params = WindowParams(context=8, overlap=3, stride=2, frame_budget=budget)
    holder = {"hint": code_tensor(blocks, frames, 5)}
    inner = RoutingChecker(layout, frames, params, holder)
    registry = PerFrameInputs()
    registry.add("hint", lambda: holder["hint"], lambda v: holder.__setitem__("hint", v))
    full_hint = holder["hint"]
    x = code_tensor(blocks, frames, 4, 2, 2)
    text = code_tensor(blocks, frames, 3, 6)
    image = code_tensor(blocks, frames, 5, 2, 2)
    if sdxl:
        cond = {"crossattn": text, "vector": code_tensor(blocks, frames, 9), "c_concat": [image]}
    else:
        cond = {"c_crossattn": [text], "c_concat": [image]}
    denoiser = WindowedDenoiser(inner, params, layout, frames, per_frame=registry)
    out = denoiser(x, x[:, 0, 0, 0].clone(), cond=cond)
    assert torch.equal(out, x * 2 + 1)  # every row fused from its own frame only
    assert holder["hint"] is full_hint and layout.frames == 0  # restored after the call
    windows = schedule(frames, 0, params)
    per_call = max(1, budget // 8) if budget else 1
    assert len(inner.calls) == math.ceil(len(windows) / per_call) == denoiser.calls
    assert max(inner.calls) <= blocks * 8 * per_call


@pytest.mark.parametrize("frames,blocks", [(1, 2), (7, 2), (16, 1), (16, 3)])
def test_frames_up_to_context_make_one_plain_call(frames, blocks) -> None:
    layout = FrameLayout()
    seen = []

    def inner(x, sigma, **cond):
        seen.append((x.shape[0], layout.frames, layout.temporal_windows))
        return torch.sin(x) * sigma.view(-1, 1, 1, 1) + cond["c_crossattn"][0].sum()

    x = torch.randn(blocks * frames, 4, 3, 3)
    sigma, cond = torch.rand(blocks * frames), {"c_crossattn": [torch.randn(blocks * frames, 2, 3)]}
    for mode in WindowMode:
        seen.clear()
        out = WindowedDenoiser(inner, WindowParams(mode=mode), layout, frames, step=lambda: 5)(
            x, sigma, **cond
        )
        expected = torch.sin(x) * sigma.view(-1, 1, 1, 1) + cond["c_crossattn"][0].sum()
        assert torch.equal(out, expected)
        assert seen == [(blocks * frames, frames, None)]


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(1, 80),
    context=st.integers(1, 16),
    overlap=st.integers(-1, 15),
    loop=st.sampled_from(LOOPS),
    blocks=st.integers(1, 2),
    budget=st.sampled_from([0, 16, 48]),
    fusion=st.sampled_from(list(Fusion)),
    mode=st.sampled_from(list(WindowMode)),
    step=st.integers(0, 50),
)
def test_identity_denoiser_returns_input_exactly(
    frames, context, overlap, loop, blocks, budget, fusion, mode, step
):
    overlap = min(overlap, context - 1)
    params = WindowParams(
        context=context, overlap=overlap, closed_loop=loop, frame_budget=budget, fusion=fusion, mode=mode
    )
    layout = FrameLayout()

    def inner(x, sigma, **cond):
        return layout.run(lambda v, f: v, x)  # a motion block that changes nothing

    x = torch.randn(blocks * frames, 2, 2, 2)
    out = WindowedDenoiser(inner, params, layout, frames, step=lambda: step)(x, torch.ones(x.shape[0]))
    assert torch.equal(out, x)


def mixing_inner(layout: FrameLayout):
    """Fake UNet whose 'motion module' mixes frames inside each video of the call."""

    def inner(x, sigma, **cond):
        def temporal(v, f):
            video = v.view(-1, f, *v.shape[1:])  # (b·f, c, h, w) -> (b, f, c, h, w)
            mixed = video + 0.5 * video.cumsum(1) / torch.arange(1, f + 1).view(1, f, 1, 1, 1)
            return mixed.reshape(v.shape)

        return layout.run(temporal, torch.tanh(x)) * sigma.view(-1, 1, 1, 1)

    return inner


@pytest.mark.parametrize("mode", list(WindowMode))
def test_batched_windows_agree_with_one_window_per_call(mode) -> None:
    frames, layout = 64, FrameLayout()
    x, sigma = torch.randn(2 * frames, 3, 4, 4), torch.rand(2 * frames) + 0.5
    results, calls = [], []
    for budget in (0, 32, 64, 1000):
        params = WindowParams(context=16, overlap=4, frame_budget=budget, mode=mode)
        denoiser = WindowedDenoiser(mixing_inner(layout), params, layout, frames, step=lambda: 3)
        results.append(denoiser(x, sigma))
        calls.append(denoiser.calls)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)
    windows = len(schedule(frames, 3, WindowParams(context=16, overlap=4)))
    if mode == WindowMode.UNET:
        assert calls == [windows, math.ceil(windows / 2), math.ceil(windows / 4), 1]
    else:
        assert calls == [1, 1, 1, 1]  # spatial layers see every frame once per step


def test_motion_module_mode_windows_only_the_temporal_pass() -> None:
    frames, layout = 50, FrameLayout()
    params = WindowParams(context=16, overlap=4, mode=WindowMode.MOTION_MODULE)
    seen: list[tuple[int, ...]] = []
    spatial_rows = []

    def inner(x, sigma, **cond):
        spatial_rows.append(x.shape[0])

        def temporal(v, f):
            seen.extend(tuple(int(c) for c in video) for video in v[:, 0, 0, 0].view(-1, f) % 1000)
            return v

        return layout.run(temporal, x)

    x = code_tensor(2, frames, 2, 2, 2)
    out = WindowedDenoiser(inner, params, layout, frames, step=lambda: 1)(x, torch.ones(2 * frames))
    assert torch.equal(out, x) and spatial_rows == [2 * frames]
    assert set(seen) == set(schedule(frames, 1, params))  # exactly the scheduled windows
    assert set().union(*map(set, seen)) == set(range(frames))


def test_interrupt_hook_runs_between_windows() -> None:
    class Stop(BaseException):
        pass

    count = []

    def between():
        count.append(1)
        if len(count) == 2:
            raise Stop

    layout = FrameLayout()
    denoiser = WindowedDenoiser(lambda x, s: x, WindowParams(frame_budget=0), layout, 64, between=between)
    with pytest.raises(Stop):
        denoiser(torch.zeros(64, 1), torch.zeros(64))
    assert denoiser.calls == 1 and layout.frames == 0


def test_rows_that_are_not_whole_videos_are_refused() -> None:
    denoiser = WindowedDenoiser(lambda x, s: x, WindowParams(), FrameLayout(), 20)
    with pytest.raises(ValueError, match="not a whole number of 20-frame videos"):
        denoiser(torch.zeros(30, 1), torch.zeros(30))


# --- a real ldm UNet with a motion module injected -------------------------------------------


@pytest.fixture(scope="module")
def real_unet():
    pytest.importorskip("ldm")
    from factories import make_mm_state_dict, make_sd15_unet

    from motion_module.detect import detect
    from motion_module.injection import inject
    from motion_module.loading import build_module
    from motion_module.spec import Family

    unet = make_sd15_unet()
    model = build_module(detect(make_mm_state_dict(Family.V3), ""), "cpu", torch.float32)
    layout = FrameLayout()
    handle = inject(unet, model, layout, "sd15")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small calls: one thread is faster than two fighting other jobs
    try:
        yield unet, model, layout
    finally:
        torch.set_num_threads(threads)
        handle.remove()


def unet_call(unet):
    def inner(x, sigma, cond):
        return unet(x, timesteps=sigma, context=cond["c_crossattn"][0])

    return inner


def test_real_unet_batched_windows_match_single_windows(real_unet) -> None:
    unet, _, layout = real_unet
    frames = 12
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * frames, 4, 8, 8, generator=gen)
    t = torch.full((2 * frames,), 400, dtype=torch.long)
    cond = {"c_crossattn": [torch.randn(2 * frames, 3, 64, generator=gen)]}
    outs = []
    with torch.no_grad():
        for budget in (0, 12):
            params = WindowParams(context=6, overlap=2, frame_budget=budget)
            outs.append(
                WindowedDenoiser(unet_call(unet), params, layout, frames, step=lambda: 2)(x, t, cond=cond)
            )
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
        with layout.using(frames):
            full = unet(x, timesteps=t, context=cond["c_crossattn"][0])
        assert (outs[0] - full).abs().max() > 1e-3  # windows change the result: the module is live


def test_real_unet_modes_agree_without_temporal_effect(real_unet) -> None:
    """With the motion module's output projection zeroed, spatial layers alone decide the result:
    full-UNet windows, motion-module windows and one plain call must then agree."""
    unet, model, layout = real_unet
    frames = 12
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(frames, 4, 8, 8, generator=gen)
    t = torch.full((frames,), 700, dtype=torch.long)
    cond = {"c_crossattn": [torch.randn(frames, 3, 64, generator=gen)]}
    saved = {k: v.clone() for k, v in model.state_dict().items() if "proj_out" in k}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj_out" in name:
                p.zero_()
        try:
            with layout.using(frames):
                full = unet(x, timesteps=t, context=cond["c_crossattn"][0])
            for mode in WindowMode:
                params = WindowParams(context=6, overlap=2, mode=mode)
                out = WindowedDenoiser(unet_call(unet), params, layout, frames, step=lambda: 1)(
                    x, t, cond=cond
                )
                torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)
        finally:
            model.load_state_dict(saved, strict=False)


def test_real_unet_motion_module_windows_from_tokens_equal_the_sites_run_per_window(
    real_unet, monkeypatch
) -> None:
    """The default mode's motion sites cut their windows from their token sequences; the UNet's
    output equals every site run on each window's frames and fused (the path a site with an
    across-frames norm takes) to float32 rounding, with the temporal pass really windowed."""
    from motion_module.layers import TemporalTransformer3DModel

    unet, model, layout = real_unet
    frames, sites = 20, len(model.site_modules())
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2 * frames, 4, 8, 8, generator=gen)
    t = torch.full((2 * frames,), 600, dtype=torch.long)
    cond = {"c_crossattn": [torch.randn(2 * frames, 3, 64, generator=gen)]}
    params = WindowParams(context=8, overlap=3, frame_budget=16, mode=WindowMode.MOTION_MODULE)

    def denoise() -> torch.Tensor:
        with torch.no_grad():
            return WindowedDenoiser(unet_call(unet), params, layout, frames, step=lambda: 2)(x, t, cond=cond)

    windowed_calls = []
    original = TemporalTransformer3DModel.over_windows

    def spy(self, tokens, windows):
        windowed_calls.append(len(windows.windows))
        return original(self, tokens, windows)

    monkeypatch.setattr(TemporalTransformer3DModel, "over_windows", spy)
    ours = denoise()
    assert len(windowed_calls) == sites and set(windowed_calls) == {len(schedule(frames, 2, params))}
    monkeypatch.setattr(TemporalTransformer3DModel, "windows_in_tokens", property(lambda self: False))
    per_window = denoise()
    assert len(windowed_calls) == sites  # the second run took the per-window path
    torch.testing.assert_close(ours, per_window, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), layout.using(frames):
        assert (ours - unet(x, timesteps=t, context=cond["c_crossattn"][0])).abs().max() > 1e-3


def test_real_unet_motion_module_mode_runs_spatial_layers_in_bounded_chunks(real_unet) -> None:
    """Motion-module windows with a frame budget: every per-frame layer sees at most that many rows
    (so its transient memory does not grow with the video), and the result equals the unchunked
    run to float tolerance (the same per-row arithmetic, split into smaller matrix products)."""
    unet, _, layout = real_unet
    frames = 24
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2 * frames, 4, 8, 8, generator=gen)
    t = torch.full((2 * frames,), 500, dtype=torch.long)
    cond = {"c_crossattn": [torch.randn(2 * frames, 3, 64, generator=gen)]}
    # the attention blocks inside every spatial transformer: their input rows are the frames at once
    blocks = [m.transformer_blocks[0] for m in unet.modules() if type(m).__name__ == "SpatialTransformer"]
    widest: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: widest.append(args[0].shape[0])) for m in blocks]
    try:
        outs = {}
        with torch.no_grad():
            for budget in (0, 8):
                widest.clear()
                params = WindowParams(
                    context=8, overlap=2, frame_budget=budget, mode=WindowMode.MOTION_MODULE
                )
                denoiser = WindowedDenoiser(unet_call(unet), params, layout, frames, step=lambda: 1)
                outs[budget] = (denoiser(x, t, cond=cond), max(widest))
    finally:
        for hook in hooks:
            hook.remove()
    assert outs[0][1] == 2 * frames and outs[8][1] == 8  # unbounded vs the budget
    torch.testing.assert_close(outs[8][0], outs[0][0], rtol=1e-4, atol=1e-5)
    assert layout.spatial_rows == 0  # outside the call, layers run plainly again
