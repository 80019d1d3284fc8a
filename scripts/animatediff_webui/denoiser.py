"""The host seam for window sampling: wraps the WebUI CFG denoiser's inner model per sampling pass.

``CFGDenoiser.forward`` (shared by the k-diffusion, timestep and LCM samplers) calls
``self.inner_model(x_in, sigma_in, cond={...})`` with whole-video row blocks; we replace that inner
model's ``forward`` on the instance with a ``motion_module.windows.WindowedDenoiser`` (the write and
its exact undo are ``host_changes.denoiser_forward``). Imports WebUI modules only lazily, inside
the interrupt check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from motion_module.frames import FrameLayout
from motion_module.params import AnimateDiffParams
from motion_module.windows import PerFrameInputs, WindowedDenoiser

from . import host_changes
from .patch_session import PatchSession

log = logging.getLogger("animatediff")


class WindowedForward:
    """What sits in ``inner_model.forward``; a pass-through once its session undid it.

    Going inert instead of vanishing matters when another extension wrapped our forward after
    us: removing ours would cut their chain, so we leave it in place and stop windowing.
    """

    def __init__(self, windowed: WindowedDenoiser, original: Callable[..., Any], session: PatchSession):
        self.windowed, self.original, self.session = windowed, original, session
        self.active = True

    def deactivate(self) -> None:
        self.active = False

    def __call__(self, x: Any, sigma: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self.original(x, sigma, **kwargs)
        return self.windowed(x, sigma, **kwargs)


def install(
    session: PatchSession,
    cfg_denoiser: Any,
    params: AnimateDiffParams,
    layout: FrameLayout,
    per_frame_inputs: PerFrameInputs | None = None,
    between: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WindowedDenoiser:
    """Run ``cfg_denoiser``'s inner model over context windows until ``session`` closes.

    When to call: in ``process_before_every_sampling``, with ``p.sampler.model_wrap_cfg``. The
    WebUI has created the sampler for this pass by then: txt2img builds a new one per batch and
    per hires pass (so every pass is wrapped anew), img2img builds one in ``p.init`` and reuses
    it across batches (a repeated call for the same denoiser and session is a no-op and returns
    the existing wrapper). Calling it again from ``on_cfg_denoiser`` is cheap and re-wraps a
    denoiser whose inner model the WebUI rebuilt (``update_inner_model``).

    Every inner call must hold whole ``params.frames``-row blocks ([cond | uncond], one of them,
    or three for edit models), which is true with and without "batch cond/uncond", with unequal
    cond/uncond lengths and with uncond skipped, but not with ``AND`` prompts (several cond rows
    per frame, interleaved). ``per_frame_inputs`` slices extra per-frame tensors (ControlNet
    hints) for each window. ``between`` runs before each windowed UNet call; by default it raises
    the WebUI's ``InterruptedException`` on Interrupt/Skip, so long videos stop within one window;
    ``progress(k, n)`` by default names the window in the progress text.
    """
    inner = cfg_denoiser.inner_model  # the property creates the WebUI's model wrapper if needed
    current = inner.__dict__.get("forward")
    if isinstance(current, WindowedForward) and current.active:
        if current.session is session:
            return current.windowed
        raise RuntimeError(
            "the sampler's denoiser is still windowed by an earlier AnimateDiff job that was not "
            "closed; close that job's session first"
        )

    original = inner.forward
    windowed = WindowedDenoiser(
        original,
        params.window,
        layout,
        params.frames,
        step=lambda: cfg_denoiser.step,
        per_frame=per_frame_inputs,
        between=between or raise_if_interrupted,
        progress=progress or (lambda number, count: show_window(cfg_denoiser.step, number, count)),
    )
    forward = WindowedForward(windowed, original, session)
    host_changes.denoiser_forward(session, inner, forward, on_undo=forward.deactivate)
    log.debug("AnimateDiff: windowed %s (%d frames, %s)", type(inner).__name__, params.frames, params.window)
    return windowed


def show_window(step: int, number: int, count: int) -> None:
    """The progress text names the window: "step 3/20 · window 4/7"."""
    from modules import shared

    state = shared.state
    steps = int(getattr(state, "sampling_steps", 0) or 0)
    text = (
        f"AnimateDiff: step {int(step) + 1}/{steps} · window {number}/{count}"
        if steps
        else (f"AnimateDiff: window {number}/{count}")
    )
    host_changes.progress_text(state, text)


def raise_if_interrupted() -> None:
    """Stop between windows when the user pressed Interrupt or Skip (the WebUI checks only once
    per denoiser call, which for a long video is many UNet calls)."""
    from modules import sd_samplers_common, shared

    if shared.state.interrupted or shared.state.skipped:
        raise sd_samplers_common.InterruptedException
