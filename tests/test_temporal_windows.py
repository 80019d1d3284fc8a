"""A motion site over context windows, cut from its own token sequences (layers.over_windows).

The trusted reference is the site run on each window's frames and fused by weight
(``TemporalWindows.run``, the same path every other temporal computation takes; the site itself is
checked against diffusers in test_layers.py). The token path must equal it to float rounding while
doing the window-independent work once per frame, within the frame budget's memory.
"""

from __future__ import annotations

import functools

import pytest
import torch
from factories import site_tensors
from hypothesis import given, settings
from hypothesis import strategies as st

from motion_module.frames import FrameLayout, TemporalWindows
from motion_module.injection import MotionBlock
from motion_module.layers import VanillaTemporalModule
from motion_module.motion_strength import MotionStrength
from motion_module.params import ClosedLoop, Fusion, WindowParams
from motion_module.window_schedule import schedule

pytestmark = pytest.mark.usefixtures("single_thread")

CHANNELS, HEIGHT, WIDTH = 32, 2, 3


@functools.cache
def site64(across_frames: bool = False) -> VanillaTemporalModule:
    """A float64 site with non-trivial weights (proj_out is not zero, as in trained modules)."""
    site = VanillaTemporalModule(CHANNELS, 32, norm_across_frames=across_frames)
    tensors = site_tensors(CHANNELS, torch.Generator().manual_seed(5), 0.3, 32, torch.float64, "cpu")
    site.temporal_transformer.load_state_dict(tensors)
    return site.double().eval()


def video(blocks: int, frames: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(blocks * frames, CHANNELS, HEIGHT, WIDTH, generator=gen, dtype=torch.float64)


def per_window(site, x, frames, windows, scale=None) -> torch.Tensor:
    """The reference: the whole site on each window's rows, outputs fused per frame."""
    return windows.run(functools.partial(site, scale=scale), x, frames)


def plan(frames: int, step: int = 0, budget: int = 32, **params) -> TemporalWindows:
    p = WindowParams(frame_budget=budget, **params)
    return TemporalWindows(tuple(schedule(frames, step, p)), p.fusion, budget)


@settings(max_examples=30, deadline=None)
@given(
    frames=st.integers(2, 70),
    context=st.integers(2, 16),
    overlap=st.integers(-1, 15),
    stride=st.integers(1, 3),
    loop=st.sampled_from(list(ClosedLoop)),
    fusion=st.sampled_from(list(Fusion)),
    blocks=st.integers(1, 2),
    budget=st.sampled_from([0, 5, 16, 48]),
    step=st.integers(0, 20),
    scale=st.sampled_from([None, 0.5, "map"]),
)
def test_token_windows_equal_the_site_per_window(
    frames, context, overlap, stride, loop, fusion, blocks, budget, step, scale
) -> None:
    site = site64()
    windows = plan(
        frames,
        step,
        budget,
        context=context,
        overlap=min(overlap, context - 1),
        stride=stride,
        closed_loop=loop,
        fusion=fusion,
    )
    if scale == "map":
        scale = torch.linspace(0, 2, HEIGHT * WIDTH, dtype=torch.float64).view(HEIGHT, WIDTH)
    x = video(blocks, frames, seed=frames)
    with torch.no_grad():
        ours = site(x, frames, scale, windows)
        reference = per_window(site, x, frames, windows, scale)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_windows_matter_and_one_window_is_the_plain_site() -> None:
    """The comparison above cannot pass vacuously: windows change the output, and a single window
    over every frame gives the plain site's output."""
    site, frames = site64(), 24
    x = video(2, frames)
    with torch.no_grad():
        plain = site(x, frames)
        one = site(x, frames, None, TemporalWindows((tuple(range(frames)),), Fusion.PYRAMID, 32))
        windowed = site(x, frames, None, plan(frames, context=8, overlap=2))
    torch.testing.assert_close(one, plain, rtol=1e-12, atol=1e-12)
    assert (windowed - plain).abs().max() > 1e-2


class TokenCounter:
    """Tokens (rows of the (n, f, c) sequences) reaching chosen layers of a site."""

    def __init__(self, site: VanillaTemporalModule):
        tt = site.temporal_transformer
        block = tt.transformer_blocks[0]
        self.layers = {
            "proj_in": tt.proj_in,
            "to_q": block.attention_blocks[0].to_q,
            "second attention": block.attention_blocks[1].to_q,
            "feed-forward": block.ff,
            "proj_out": tt.proj_out,
        }
        self.tables = {a.pos_encoder.pe.untyped_storage().data_ptr() for a in block.attention_blocks}
        self.calls: dict[str, list[int]] = {name: [] for name in self.layers}
        self.hooks = [
            layer.register_forward_pre_hook(functools.partial(self._seen, name))
            for name, layer in self.layers.items()
        ]

    def _seen(self, name, module, args) -> None:
        if args[0].untyped_storage().data_ptr() not in self.tables:  # position terms aside
            self.calls[name].append(args[0].shape[0] * args[0].shape[1])

    def total(self, name: str) -> int:
        return sum(self.calls[name])

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@pytest.mark.parametrize("budget", [0, 16, 32])
def test_window_independent_work_runs_once_per_frame_within_the_budget(budget) -> None:
    site, frames, blocks = site64(), 64, 2
    windows = plan(frames, budget=budget, context=16, overlap=8)
    in_windows = sum(len(w) for w in windows.windows)
    assert in_windows >= 1.7 * frames  # every frame sits in about 1.75 windows
    sequences = blocks * HEIGHT * WIDTH
    counter = TokenCounter(site)
    try:
        with torch.no_grad():
            site(video(blocks, frames), frames, None, windows)
    finally:
        counter.remove()
    for once in ("proj_in", "to_q", "proj_out"):
        assert counter.total(once) == sequences * frames, once
    for per_window_layer in ("second attention", "feed-forward"):
        assert counter.total(per_window_layer) == sequences * in_windows, per_window_layer
    call = sequences * max(budget, 16)  # the tokens of `budget` frames of every pixel sequence
    assert max(max(calls) for calls in counter.calls.values()) <= call
    assert max(counter.calls["proj_in"]) <= call // 2  # a chunk's per-frame tensors: half a call
    assert len(counter.calls["proj_in"]) >= 4  # so the pixel sequences went in several chunks


def test_between_runs_before_every_packed_call_and_may_stop_the_pass() -> None:
    site, frames = site64(), 40
    heard = []

    class Stop(Exception):
        pass

    def between() -> None:
        heard.append(1)
        if len(heard) == 3:
            raise Stop

    p = plan(frames, context=8, overlap=2, budget=16)
    windows = TemporalWindows(p.windows, p.fusion, p.frame_budget, between)
    with torch.no_grad(), pytest.raises(Stop):
        site(video(1, frames), frames, None, windows)
    assert len(heard) == 3


def test_motion_block_cuts_windows_from_tokens_only_with_a_per_frame_norm() -> None:
    frames = 20
    windows = plan(frames, context=8, overlap=3)
    x = video(2, frames)
    for across in (False, True):
        site, layout = site64(across), FrameLayout()
        block = MotionBlock(site, layout, "input_blocks.1")
        counter = TokenCounter(site)
        try:
            with torch.no_grad(), layout.using(frames, windows), layout.applying(MotionStrength(0.7)):
                out = block(x)
        finally:
            counter.remove()
        with torch.no_grad():
            reference = per_window(site, x, frames, windows, 0.7)
        torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
        per_frame_tokens = 2 * HEIGHT * WIDTH * frames
        assert (counter.total("proj_in") == per_frame_tokens) is not across  # across: per window
    with pytest.raises(ValueError, match="across frames"):
        site64(True)(x, frames, None, windows)


def test_bfloat16_tokens_are_as_close_to_float32_as_the_per_window_path() -> None:
    """Accumulating the fused mean in float32 keeps the rounding of a bfloat16 run that of the
    per-window path (which fuses in float32 too)."""
    site = VanillaTemporalModule(CHANNELS, 32)
    site.temporal_transformer.load_state_dict(
        site_tensors(CHANNELS, torch.Generator().manual_seed(5), 0.05, 32, torch.float32, "cpu")
    )
    frames = 24
    windows = plan(frames, context=8, overlap=2)
    x = video(2, frames).float()
    with torch.no_grad():
        reference = site(x, frames, None, windows)
        site = site.to(torch.bfloat16)
        ours = site(x.bfloat16(), frames, None, windows)
        theirs = per_window(site, x.bfloat16(), frames, windows)
    assert ours.dtype == torch.bfloat16
    ours_error, their_error = ((t.float() - reference).abs().mean() for t in (ours, theirs))
    assert ours_error <= 1.25 * their_error, (ours_error, their_error)
    assert (ours.float() - reference).abs().max() < 0.05
