"""Per-frame ControlNet hints through the windowed denoiser, on a real ldm UNet with a motion module.

ControlNet keeps each unit's hint on an object (``hint_cond``) rather than in the UNet call's
arguments, and its UNet hook needs as many hint rows as the call has rows. Here a forward hook on
an input block adds a residual computed from ``hint_cond`` (a stand-in for ControlNet's residuals),
the hint is registered in ``PerFrameInputs``, and the tests check that every windowed call sees
exactly its frames' hint rows, for cond and uncond, and that the full hint is back after each call.
"""

from __future__ import annotations

import pytest
import torch

from motion_module.frames import FrameLayout
from motion_module.params import WindowMode, WindowParams
from motion_module.window_fusion import FusionBuffer, fusion_weights, window_rows
from motion_module.windows import PerFrameInputs, WindowedDenoiser, schedule

pytestmark = pytest.mark.usefixtures("single_thread")

HINT_CHANNELS = 3


class ControlUnit:
    """Holds a hint like ControlNet's control params: a property whose setter counts the writes
    (ControlNet's setter clears caches)."""

    def __init__(self, hint: torch.Tensor | None = None):
        self._hint, self.writes = hint, 0

    @property
    def hint_cond(self) -> torch.Tensor | None:
        return self._hint

    @hint_cond.setter
    def hint_cond(self, value: torch.Tensor) -> None:
        self._hint, self.writes = value, self.writes + 1


@pytest.fixture(scope="module")
def controlled_unet():
    """Tiny SD1.5 UNet, motion module injected, and a hint residual added after input block 1."""
    pytest.importorskip("ldm")
    from factories import make_mm_state_dict, make_sd15_unet

    from motion_module.detect import detect
    from motion_module.injection import inject
    from motion_module.loading import build_module
    from motion_module.spec import Family

    unet = make_sd15_unet()
    layout = FrameLayout()
    handle = inject(
        unet, build_module(detect(make_mm_state_dict(Family.V3), ""), "cpu", torch.float32), layout, "sd15"
    )
    unit = ControlUnit()
    encoder = torch.nn.Conv2d(HINT_CHANNELS, 32, 1)  # hint -> residual, like a (very) small ControlNet
    torch.nn.init.normal_(encoder.weight, std=0.5, generator=torch.Generator().manual_seed(3))

    def add_residual(module, args, output):
        hint = unit.hint_cond
        if hint is None:
            return output
        assert hint.shape[0] == output.shape[0], "ControlNet needs one hint row per UNet row"
        return output + encoder(hint)

    hook = unet.input_blocks[1].register_forward_hook(add_residual)
    try:
        yield unet, layout, unit
    finally:
        hook.remove()
        handle.remove()


def inputs(frames: int, seed: int = 0):
    """Random (x, t, context) for cond+uncond of ``frames`` frames (8×8 latents), and a 2N-row hint."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * frames, 4, 8, 8, generator=gen)
    t = torch.full((2 * frames,), 500, dtype=torch.long)
    context = torch.randn(2 * frames, 3, 64, generator=gen)
    hint = torch.randn(2 * frames, HINT_CHANNELS, 8, 8, generator=gen)
    return x, t, context, hint


class Recorder:
    """The inner model: records each call's rows, frame count and visible hint, then runs the UNet."""

    def __init__(self, unet, layout: FrameLayout, unit: ControlUnit):
        self.unet, self.layout, self.unit = unet, layout, unit
        self.calls: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    def __call__(self, x, sigma, cond):
        self.calls.append((x, self.layout.frames, self.unit.hint_cond))
        return self.unet(x, timesteps=sigma, context=cond["c_crossattn"][0])


def windowed(unet, layout, unit, params, frames, hint, step=1):
    """Run the windowed denoiser with ``hint`` registered; checks the hint is whole between calls."""
    unit.hint_cond, unit.writes = hint, 0
    registry = PerFrameInputs()
    registry.add("hint_cond", lambda: unit.hint_cond, lambda value: setattr(unit, "hint_cond", value))

    def between():  # runs before every windowed UNet call
        assert unit.hint_cond is hint, "the full hint was not restored after the previous call"

    recorder = Recorder(unet, layout, unit)
    denoiser = WindowedDenoiser(recorder, params, layout, frames, lambda: step, registry, between)
    return denoiser, recorder


def rows_of(part: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Which rows of ``full`` the rows of ``part`` are (rows of random data are unique)."""
    same = (part.flatten(1)[:, None] == full.flatten(1)[None]).all(-1)  # (n, N) row matches
    assert torch.equal(same.sum(1), torch.ones(part.shape[0], dtype=torch.long))
    return same.float().argmax(1)


def test_one_window_over_all_frames_is_one_plain_call(controlled_unet) -> None:
    unet, layout, unit = controlled_unet
    frames = 8
    x, t, context, hint = inputs(frames)
    with torch.no_grad():
        unit.hint_cond = hint
        with layout.using(frames):
            full = unet(x, timesteps=t, context=context)
        for context_size in (8, 16):
            denoiser, recorder = windowed(
                unet, layout, unit, WindowParams(context=context_size), frames, hint
            )
            out = denoiser(x, t, cond={"c_crossattn": [context]})
            assert torch.equal(out, full)
            assert len(recorder.calls) == 1 and recorder.calls[0][2] is hint and unit.writes == 0
        unit.hint_cond = torch.zeros_like(hint)
        with layout.using(frames):
            assert (unet(x, timesteps=t, context=context) - full).abs().max() > 1e-2  # the hint matters
    unit.hint_cond = None


@pytest.mark.parametrize("budget", [0, 16])
def test_each_window_call_sees_exactly_its_frames_hint_rows(controlled_unet, budget) -> None:
    unet, layout, unit = controlled_unet
    frames, step = 24, 1
    params = WindowParams(context=8, overlap=2, frame_budget=budget)
    x, t, context, hint = inputs(frames, seed=1)
    with torch.no_grad():
        denoiser, recorder = windowed(unet, layout, unit, params, frames, hint, step)
        out = denoiser(x, t, cond={"c_crossattn": [context]})
    assert unit.hint_cond is hint and layout.frames == 0  # restored after the last call too
    windows = schedule(frames, step, params)
    assert any(list(w) != sorted(w) for w in windows)  # a window wraps around the end: a hard case
    seen = []
    for x_in, length, hint_in in recorder.calls:
        index = rows_of(x_in, x)
        assert length == 8 and torch.equal(hint_in, hint[index])  # the hint rows of these very rows
        video = index.view(2, -1, length)  # (block, window, frame) as the UNet groups them
        assert bool((video[0] < frames).all()) and torch.equal(video[1], video[0] + frames)  # cond | uncond
        seen += [tuple(w.tolist()) for w in video[0]]
    assert sorted(seen) == sorted(windows)  # every scheduled window ran exactly once
    per_call = max(1, budget // 8) if budget else 1
    assert len(recorder.calls) == -(-len(windows) // per_call) and unit.writes == 2 * len(recorder.calls)

    # the output is each window's own UNet result (with its own hint slice), fused by weight
    expected = FusionBuffer(x, frames)
    with torch.no_grad():
        for window in windows:
            rows = window_rows(window, frames, 2, x.device)
            unit.hint_cond = hint[rows]
            with layout.using(len(window)):
                result = unet(x[rows], timesteps=t[rows], context=context[rows])
            expected.add(window, result, fusion_weights(len(window), params.fusion))
    unit.hint_cond = None
    torch.testing.assert_close(out, expected.result(), rtol=1e-5, atol=1e-5)


def test_a_hint_shared_by_cond_and_uncond_is_sliced_modulo(controlled_unet) -> None:
    unet, layout, unit = controlled_unet
    frames = 24
    params = WindowParams(context=8, overlap=2, frame_budget=16)
    x, t, context, hint = inputs(frames, seed=2)
    shared = hint[:frames]  # N rows: one per frame, for both halves
    with torch.no_grad():
        denoiser, recorder = windowed(unet, layout, unit, params, frames, shared)
        out = denoiser(x, t, cond={"c_crossattn": [context]})
        assert unit.hint_cond is shared and len(recorder.calls) > 1
        doubled, _ = windowed(unet, layout, unit, params, frames, torch.cat([shared, shared]))
        reference = doubled(x, t, cond={"c_crossattn": [context]})
    for x_in, _, hint_in in recorder.calls:
        assert torch.equal(hint_in, shared[rows_of(x_in, x) % frames])
    assert torch.equal(out, reference)
    unit.hint_cond = None


def test_motion_module_mode_gives_the_unet_every_frames_hint_at_once(controlled_unet) -> None:
    unet, layout, unit = controlled_unet
    frames = 24
    params = WindowParams(context=8, overlap=2, mode=WindowMode.MOTION_MODULE)
    x, t, context, hint = inputs(frames, seed=3)
    with torch.no_grad():
        denoiser, recorder = windowed(unet, layout, unit, params, frames, hint)
        out = denoiser(x, t, cond={"c_crossattn": [context]})
    ((x_in, length, hint_in),) = recorder.calls
    assert x_in is x and length == frames and hint_in is hint and unit.writes == 0
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    unit.hint_cond = None


class RowReader:
    """Stands in for ControlNet's IP-Adapter: a per-row embedding and the call's cond marks kept
    outside the layers' arguments (the marks are made by the inner call, as ControlNet makes them
    at the start of each UNet call), read by a forward hook on every cross-attention, which adds
    the marked embedding to the output and records which rows it got."""

    def __init__(self, rows: int):
        self.emb = torch.arange(1, rows + 1, dtype=torch.float32)  # row k holds k + 1
        self.mark: torch.Tensor | None = None
        self.seen: list[tuple[list[int], list[int], int]] = []
        self.resets = 0

    def hook(self, module, args, output):
        assert self.emb.shape[0] == self.mark.shape[0] == output.shape[0], "one embedding row per layer row"
        self.seen.append((self.emb.long().tolist(), self.mark.long().tolist(), output.shape[0]))
        return output + 0.01 * (self.emb * self.mark).view(-1, 1, 1)


def test_motion_module_chunks_give_inputs_read_in_layers_their_rows(controlled_unet) -> None:
    """Motion-module mode with a frame budget runs per-frame layers over chunks of the call's
    rows; inputs those layers read from elsewhere (registered ``per_chunk``) hold each chunk's
    rows while it runs, one made during the call (``per_call`` False) included, resets run around
    every chunk, and the result equals the unchunked run to float tolerance."""
    unet, layout, _unit = controlled_unet
    frames = 12
    x, t, context, _hint = inputs(frames, seed=4)
    attentions = [
        m.transformer_blocks[0].attn2 for m in unet.modules() if type(m).__name__ == "SpatialTransformer"
    ]
    outs, seen = {}, {}
    for budget in (0, 8):
        reader = RowReader(2 * frames)
        registry = PerFrameInputs()
        registry.add(
            "embedding", lambda r=reader: r.emb, lambda v, r=reader: setattr(r, "emb", v), per_chunk=True
        )
        registry.add(
            "marks",
            lambda r=reader: r.mark,
            lambda v, r=reader: setattr(r, "mark", v),
            per_call=False,
            per_chunk=True,
        )
        registry.add_reset(lambda r=reader: setattr(r, "resets", r.resets + 1))
        chunks_run: list[tuple] = []
        real_chunk = registry.chunk

        def chunk(*args, real=real_chunk, log=chunks_run):
            log.append(args[:3])
            return real(*args)

        registry.chunk = chunk

        def inner(x_in, sigma, cond, r=reader):
            r.mark = torch.cat([torch.ones(frames), torch.zeros(frames)])  # a fresh tensor each call
            return unet(x_in, timesteps=sigma, context=cond["c_crossattn"][0])

        params = WindowParams(context=8, overlap=2, frame_budget=budget, mode=WindowMode.MOTION_MODULE)
        hooks = [a.register_forward_hook(reader.hook) for a in attentions]
        try:
            with torch.no_grad():
                outs[budget] = WindowedDenoiser(inner, params, layout, frames, lambda: 1, registry)(
                    x, t, cond={"c_crossattn": [context]}
                )
        finally:
            for hook in hooks:
                hook.remove()
        seen[budget] = reader.seen
        assert reader.emb.shape[0] == 2 * frames and reader.mark.shape[0] == 2 * frames  # whole again
        assert reader.resets == 2 * (1 + len(chunks_run)), (budget, reader.resets)  # the call, each chunk
        assert len(chunks_run) >= (len(attentions) * 3 if budget else 0), len(chunks_run)
    full_rows = list(range(1, 2 * frames + 1))
    full_marks = [1] * frames + [0] * frames
    assert seen[0] == [(full_rows, full_marks, 2 * frames)] * len(attentions)
    chunks = [(start, min(start + 8, 2 * frames)) for start in range(0, 2 * frames, 8)]
    expected = [(full_rows[a:b], full_marks[a:b], b - a) for a, b in chunks] * len(attentions)
    assert seen[8] == expected
    torch.testing.assert_close(outs[8], outs[0], rtol=1e-4, atol=1e-5)
