"""The WebUI's hooks, each a few lines: find this ``p``'s job, run one phase, stop on failure.

Order in one generation: ``before_process`` parses the parameters once and starts the job
(frames as the batch, prompts per frame); ``process`` injects the motion module into the model
loaded now; ``before_process_batch`` sets img2vid's start latents; every sampling pass (first
pass, hires, img2img) gets the windowed denoiser in ``process_before_every_sampling``;
``postprocess`` exports and closes the job. The phases are in ``job``, the host changes in
``host_changes``, and how a failure stops the job in ``failure``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from motion_module.params import ParamsError

from . import args as ad_args
from . import conditioning, controlnet, failure, host_changes, inpaint_masks
from . import job as jobs
from .failure import AnimateDiffError
from .job import Job, base_params, close_stale, job_of, model_folder

__all__ = ["AnimateDiffError", "base_params", "close_stale", "job_of", "model_folder"]

log = logging.getLogger("animatediff")


def before_process(p: Any, script_args: Sequence[Any], is_img2img: bool) -> None:
    if jobs.nested(p):
        log.info("AnimateDiff: off for a generation nested in an AnimateDiff job (e.g. ADetailer)")
        return
    close_stale("a new job started")
    try:
        params = ad_args.for_job(p, script_args, base_params())
    except ParamsError as error:
        if error.enable:
            failure.arm(p, failure.as_error(str(error), 422))
        else:
            log.debug("AnimateDiff is off; ignoring an invalid panel value: %s", error)
        return
    if not params.enable:
        return
    if getattr(p, "txt2img_upscale", False):
        log.info("AnimateDiff: skipped for the Upscale button (it re-runs one image)")
        return
    try:
        job = jobs.start(p, params, is_img2img)
    except ValueError as error:  # a motion mask that is no image
        failure.arm(p, failure.as_error(error))
        return
    _guarded(p, job, jobs.prepare)


def _job_hook(body: Callable[..., None]) -> Callable[..., None]:
    """A hook that acts only on AnimateDiff's own job, with failures handled by ``_guarded``."""

    @functools.wraps(body)
    def hook(p: Any, *args: Any, **kwargs: Any) -> None:
        job = job_of(p)
        if job is not None:
            _guarded(p, job, body, *args, **kwargs)

    return hook


def _guarded(p: Any, job: Job, body: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run one phase; on any failure restore the host at once and make the job stop."""
    try:
        body(p, job, *args, **kwargs)
    except Exception as error:
        job.error = job.error or failure.as_error(error)
        try:
            job.close("setup failed")
        except Exception as undo_error:  # already logged by the session; the job stops anyway
            log.error("AnimateDiff: restoring the WebUI after the failure also failed: %s", undo_error)
        failure.arm(p, job.error)


@_job_hook
def process(p: Any, job: Job) -> None:
    jobs.open_model(p, job)


@_job_hook
def before_process_batch(p: Any, job: Job) -> None:
    jobs.check_same_model(job)
    jobs.count_export(job)
    jobs.blend_start_latents(p, job)


@_job_hook
def before_hr(p: Any, job: Job) -> None:
    jobs.check_same_model(job)


@_job_hook
def process_before_every_sampling(p: Any, job: Job, c: Any = None, uc: Any = None) -> None:
    """Every sampling pass (txt2img, hires, img2img) has a new sampler and denoiser: wrap it."""
    from . import denoiser

    if c is not None and uc is not None:
        conditioning.pad_conditioning(job.session, p, c, uc)
    hints = controlnet.hint_inputs(p, job.params.frames)
    denoiser.install(job.session, p.sampler.model_wrap_cfg, job.params, job.layout, hints)
    log.info(
        "AnimateDiff: windowed denoiser on %s (%d frames, context %d)",
        "the hires pass" if getattr(p, "is_hr_pass", False) else "the sampler",
        job.params.frames,
        job.params.window.context,
    )


def on_cfg_denoiser(cfg_params: Any) -> None:
    """Registered once; acts only while a job is open and the denoiser belongs to it. Re-wraps a
    denoiser whose inner model the WebUI rebuilt (refiner), then substitutes per-frame prompts."""
    for job in list(jobs._active):
        if job.open and job.owns(getattr(cfg_params.denoiser, "p", None)):
            try:
                from . import denoiser

                hints = controlnet.hint_inputs(job.owner(), job.params.frames)
                denoiser.install(job.session, cfg_params.denoiser, job.params, job.layout, hints)
                conditioning.on_cfg_denoiser(job.travel, cfg_params)
            except Exception as error:  # the WebUI swallows callback errors: stop sampling instead
                job.error = job.error or AnimateDiffError(
                    f"AnimateDiff: sampling setup failed: {failure.describe(error)}"
                )
                log.error("%s", job.error)
                host_changes.interrupt(job.session, jobs.shared().state)
            return


def postprocess_batch_list(p: Any, batch_number: int) -> None:
    job = job_of(p)
    if job is not None:
        conditioning.restore_infotext_prompts(p, job.travel, job.params.frames, batch_number)


def postprocess_maskoverlay(p: Any, overlay_args: Any) -> None:
    """Per-frame inpaint masks: each image is pasted back and returned with its frame's mask."""
    job = job_of(p)
    if job is not None:
        inpaint_masks.overlay_mask(job.overlay_masks, overlay_args)


def postprocess(p: Any, processed: Any) -> None:
    job = job_of(p)
    if job is None:
        return
    try:
        if job.error is None:
            jobs.export(p, processed, job)
    finally:
        job.close("job finished")


def on_script_unloaded() -> None:
    close_stale("scripts unloaded")
    jobs.forget_models()
