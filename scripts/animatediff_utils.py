"""Names other extensions import from us by module name (sd-webui-controlnet looks them up).

``get_animatediff_arg(p)`` returns a small mutable view of this job's AnimateDiff parameters with
the attribute names ControlNet reads (``enable``, ``video_length``, ``batch_size`` = context,
``closed_loop``, ``video_path``, ``prompt_scheduler``...). Contains no Script class, so the
WebUI registers nothing from this file.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from motion_module.params import TravelInterpolation
from motion_module.prompt_travel import interpolate_frames

log = logging.getLogger("animatediff")

_VIEW_ATTR = "animatediff_cn_view"  # kept on p so ControlNet's edits (is_i2i_batch) persist


class PromptScheduler:
    """IP-Adapter keyframes travel like prompt keyframes. ControlNet copies this object, sets
    ``prompt_map`` to {frame: ...} of the frames its images sit on, and calls ``multi_cond``
    with one embedding row per frame; the rows between keyframes are interpolated the way
    prompt travel interpolates (exact at keyframes; ``closed_loop`` travels back to the first)."""

    def __init__(self, mode: TravelInterpolation = TravelInterpolation.SLERP):
        self.prompt_map: dict[int, Any] = {}
        self.mode = mode

    def multi_cond(self, cond: Any, closed_loop: bool = False) -> Any:
        keyframes = sorted(int(k) for k in self.prompt_map)
        if len(keyframes) < 2:
            return cond
        rows = [cond[k] for k in keyframes]
        return interpolate_frames(rows, keyframes, cond.shape[0], wrap=closed_loop, mode=self.mode).to(cond)


def get_animatediff_arg(p: Any) -> SimpleNamespace | None:
    """ControlNet's probe: None when AnimateDiff is off or not configured for this ``p``."""
    view = getattr(p, _VIEW_ATTR, None)
    if view is not None:
        return view
    from scripts.animatediff_webui import args, host_changes
    from scripts.animatediff_webui import job as jobs

    job = jobs.job_of(p)
    params = job.params if job is not None else None
    if params is None:
        script_args = args.script_args_of(p)
        if script_args is None:
            return None
        try:
            params = args.for_job(p, script_args, jobs.base_params())
        except ValueError as error:  # the job itself reports it in before_process
            log.debug("get_animatediff_arg: %s", error)
            return None
    if not params.enable:
        return None
    view = SimpleNamespace(
        enable=True,
        model=params.model,
        video_length=params.frames,
        batch_size=params.window.context,
        stride=params.window.stride,
        overlap=params.window.effective_overlap,
        closed_loop=params.window.closed_loop.value,
        fps=params.export.fps,
        video_source=params.video_source or None,
        video_path=params.video_path,
        mask_path=params.mask_path,
        is_i2i_batch=False,
        prompt_scheduler=PromptScheduler(params.travel_interpolation),
        request_id=params.request_id,
    )
    if job is not None:
        host_changes.controlnet_view(job.session, p, _VIEW_ATTR, view)
    else:  # ControlNet's img2img Batch tab asks before any job exists; it marks the view there
        host_changes.controlnet_view_before_job(p, _VIEW_ATTR, view)
    return view
