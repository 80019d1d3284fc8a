"""One generation from start to finish: parse, patch the host through one session, export, undo.

``before_process`` closes a stale session, parses the parameters once, opens this job's
``PatchSession`` and makes the ``p``-level changes the WebUI reads later (frames, prompts);
``process`` loads and injects the motion module into the model now loaded; every sampling pass
gets the windowed denoiser; ``postprocess`` exports and closes. ``p.close()``, the unload hook
and the next job's start close it too, so no error path leaves the WebUI changed.

The WebUI swallows exceptions raised in script hooks. A rejected or failed setup therefore never
raises from a hook: ``_fail`` restores the host and arms ``p`` so that the next step the WebUI
takes outside the hooks raises ``AnimateDiffError`` (shown in the UI, HTTP 422/500 in the API).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from motion_module import injection as mm_injection
from motion_module.frames import FrameLayout
from motion_module.loading import LoadedMotionModule, MotionModuleCache, MotionModuleLoadError
from motion_module.params import (
    INFOTEXT_KEY,
    AnimateDiffParams,
    ExportFormat,
    coerce_field,
    infotext_value,
)

from . import args as ad_args
from . import conditioning, host_model, img2vid, output, settings
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

JOB_ATTR = "animatediff_job"  # the Job rides on its processing object
EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "0.1.0"

# Kept across jobs on purpose: re-reading a 1.7 GB file per job is slow. Cleared on script unload.
_cache = MotionModuleCache()
# The one open job, so the next job's start (or the unload hook) can close it if a failure
# skipped every other close path. This is the only module-level mutable state.
_active: list[Job] = []


class AnimateDiffError(RuntimeError):
    """Stops a job. ``status_code``/``detail`` become the API's HTTP error (WebUI api.py)."""

    def __init__(self, message: str, status_code: int = 500):
        super().__init__(message)
        self.status_code = status_code
        self.detail = message


@dataclass
class Job:
    params: AnimateDiffParams
    is_img2img: bool
    owner: Callable[[], Any] = lambda: None  # weakref to the p this job belongs to
    session: PatchSession = field(default_factory=lambda: PatchSession("AnimateDiff"))
    layout: FrameLayout = field(default_factory=FrameLayout)
    loaded: LoadedMotionModule | None = None
    host: host_model.HostModel | None = None
    error: AnimateDiffError | None = None
    move_to_cpu: bool = False

    @property
    def open(self) -> bool:
        return not self.session.closed

    def owns(self, p: Any) -> bool:
        """False for copies of ``p`` (X/Y/Z cells, ADetailer): they carry our attributes too."""
        return p is not None and self.owner() is p

    def close(self, reason: str) -> None:
        if self in _active:
            _active.remove(self)
        if not self.open:
            return
        try:
            self.session.close()
        finally:
            if self.move_to_cpu and self.loaded is not None:
                self.loaded.model.to("cpu")
            log.info("AnimateDiff: session closed (%s); the WebUI is unchanged", reason)


# --- WebUI access (imported lazily: tests put small fakes into sys.modules) -------------------


def _shared() -> Any:
    from modules import shared

    return shared


def _devices() -> Any:
    from modules import devices

    return devices


def _get() -> settings.Getter:
    return settings.getter(_shared().opts)


def base_params() -> AnimateDiffParams:
    return settings.base_params(_get())


def model_folder() -> str:
    cmd_dir = getattr(getattr(_shared(), "cmd_opts", None), "animatediff_model_dir", None)
    return settings.model_dir(_get(), cmd_dir, EXTENSION_ROOT)


def job_of(p: Any) -> Job | None:
    job = getattr(p, JOB_ATTR, None)
    return job if isinstance(job, Job) and job.open and job.owns(p) else None


# --- hooks ---------------------------------------------------------------------------------------


def before_process(p: Any, script_args: Sequence[Any], is_img2img: bool) -> None:
    parent = getattr(p, JOB_ATTR, None)
    setattr(p, JOB_ATTR, None)  # a copied p (X/Y/Z, ADetailer) must not reuse its parent's job
    if isinstance(parent, Job) and parent.open and not parent.owns(p):
        log.info("AnimateDiff: off for a generation nested in an AnimateDiff job (e.g. ADetailer)")
        return
    close_stale("a new job started")
    try:
        params = ad_args.for_job(p, script_args, base_params())
    except ValueError as error:
        if _requested_enable(p, script_args):
            _fail(p, None, str(error), status_code=422)
        else:
            log.debug("AnimateDiff is off; ignoring an invalid panel value: %s", error)
        return
    if not params.enable:
        return
    if getattr(p, "txt2img_upscale", False):
        log.info("AnimateDiff: skipped for the Upscale button (it re-runs one image)")
        return
    if params.freeinit.enable:
        log.warning("AnimateDiff: FreeInit is not implemented yet; the job runs without it")
    move_to_cpu = bool(settings.value(_get(), "animatediff_move_to_cpu"))
    job = Job(params, is_img2img, owner=weakref.ref(p), move_to_cpu=move_to_cpu)
    setattr(p, JOB_ATTR, job)
    _active.append(job)
    try:
        _prepare_p(p, job)
    except Exception as error:
        _fail(p, job, _describe(error), status_code=_status(error))


def _job_hook(body: Callable[..., None]) -> Callable[..., None]:
    """A hook that acts only on AnimateDiff's own job; any failure restores the host at once and
    makes the job stop with the message (the WebUI would swallow the exception and go on)."""

    @functools.wraps(body)
    def hook(p: Any, *args: Any, **kwargs: Any) -> None:
        job = job_of(p)
        if job is None:
            return
        try:
            body(p, job, *args, **kwargs)
        except Exception as error:
            _fail(p, job, _describe(error), status_code=_status(error))

    return hook


@_job_hook
def process(p: Any, job: Job) -> None:
    _open_model_steps(p, job)


@_job_hook
def before_process_batch(p: Any, job: Job) -> None:
    _check_same_model(job)
    if (
        job.is_img2img
        and not getattr(p, "is_i2i_batch", False)
        and getattr(p, "init_latent", None) is not None
    ):
        img2vid.blend_init_latent(p, job.session, job.params.img2vid, ad_args.as_image(job.params.last_frame))


@_job_hook
def before_hr(p: Any, job: Job) -> None:
    _check_same_model(job)


@_job_hook
def process_before_every_sampling(p: Any, job: Job, c: Any = None, uc: Any = None) -> None:
    """Every sampling pass (txt2img, hires, img2img) has a new sampler and denoiser: wrap it."""
    from . import denoiser

    if c is not None and uc is not None:
        conditioning.pad_conditioning(job.session, p, c, uc)
    cfg_denoiser = p.sampler.model_wrap_cfg
    denoiser.install(job.session, cfg_denoiser, job.params.window, job.layout, job.params.frames, None)
    log.info(
        "AnimateDiff: windowed denoiser on %s (%d frames, context %d)",
        "the hires pass" if getattr(p, "is_hr_pass", False) else "the sampler",
        job.params.frames,
        job.params.window.context,
    )


def on_cfg_denoiser(cfg_params: Any) -> None:
    """Registered once; acts only while a job is open and the denoiser belongs to it. Re-wraps a
    denoiser whose inner model the WebUI rebuilt (refiner), then substitutes per-frame prompts."""
    for job in list(_active):
        if job.open and job.owns(getattr(cfg_params.denoiser, "p", None)):
            try:
                from . import denoiser

                window, frames = job.params.window, job.params.frames
                denoiser.install(job.session, cfg_params.denoiser, window, job.layout, frames, None)
                conditioning.on_cfg_denoiser(job.session, cfg_params)
            except Exception as error:  # the WebUI swallows callback errors: stop sampling instead
                job.error = job.error or AnimateDiffError(
                    f"AnimateDiff: sampling setup failed: {_describe(error)}"
                )
                log.error("%s", job.error)
                _shared().state.interrupted = True
            return


def postprocess_batch_list(p: Any, batch_number: int) -> None:
    job = job_of(p)
    if job is None:
        return
    conditioning.restore_infotext_prompts(p, job.session, batch_number)


def postprocess(p: Any, processed: Any) -> None:
    job = job_of(p)
    if job is None:
        return
    try:
        if job.error is None:
            _export(p, processed, job)
    finally:
        job.close("job finished")


def close_stale(reason: str) -> None:
    for job in list(_active):
        log.warning("AnimateDiff: closing a session left open by an earlier job (%s)", reason)
        job.close(reason)


def on_script_unloaded() -> None:
    close_stale("scripts unloaded")
    _cache.clear()


# --- before_process: p-level changes -------------------------------------------------------------


def _prepare_p(p: Any, job: Job) -> None:
    params, session = job.params, job.session
    frames = params.frames
    images = list(getattr(p, "init_images", None) or [])
    if job.is_img2img and 1 < len(images) != frames:
        raise ValueError(
            f"AnimateDiff img2img got {len(images)} init images for {frames} frames; "
            f"give one init image (img2vid) or exactly {frames} (one per frame)"
        )
    session.step("p.sample and p.close know the job", lambda: _subclass_p(p, job), lambda undo: undo())
    p.batch_size = frames  # one video per batch; n_iter stays the number of videos
    p.do_not_save_grid = True
    png_by_webui = ExportFormat.PNG in params.export.formats and not settings.value(
        _get(), "animatediff_save_to_custom"
    )
    if not png_by_webui:
        p.do_not_save_samples = True

    conditioning.prepare_prompts(
        p,
        session,
        closed_loop=params.window.closed_loop,
        context=params.window.context,
        interpolation=params.travel_interpolation,
    )
    _write_infotext(p, job)
    log.info(
        "AnimateDiff: %d frames × %d video(s), context %d, model %s",
        frames,
        int(getattr(p, "n_iter", 1) or 1),
        params.window.context,
        params.model,
    )


def _subclass_p(p: Any, job: Job) -> Callable[[], None]:
    """Give this ``p`` a subclass whose ``sample`` re-raises errors recorded during sampling
    (where hooks and callbacks cannot raise) and whose ``close`` closes the job first: the WebUI
    calls ``p.close()`` even after exceptions. Copies of ``p`` keep the class but only delegate."""
    base = type(p)

    class AnimateDiffProcessing(base):  # type: ignore[misc, valid-type]
        def sample(self, *args: Any, **kwargs: Any) -> Any:
            if not job.owns(self):
                return base.sample(self, *args, **kwargs)
            if job.error is not None:
                raise job.error
            result = base.sample(self, *args, **kwargs)
            if job.error is not None:
                raise job.error
            return result

        def close(self) -> None:
            if not job.owns(self):
                return base.close(self)
            try:
                job.close("p.close()")
            finally:
                base.close(self)  # not super(): closing the job has already restored the class

    AnimateDiffProcessing.__name__ = AnimateDiffProcessing.__qualname__ = base.__name__
    AnimateDiffProcessing.__module__ = base.__module__
    p.__class__ = AnimateDiffProcessing

    def undo() -> None:
        if type(p) is AnimateDiffProcessing:
            p.__class__ = base

    return undo


def _write_infotext(p: Any, job: Job) -> None:
    mm_hash = job.loaded.hash if job.loaded is not None else ""
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        extra[INFOTEXT_KEY] = infotext_value(
            job.params, is_img2img=job.is_img2img, mm_hash=mm_hash, version=VERSION
        )


# --- process: the model steps --------------------------------------------------------------------


def _open_model_steps(p: Any, job: Job) -> None:
    from motion_module.window_schedule import validate_window_params

    session, params = job.session, job.params
    host = host_model.current(_shared(), _devices())
    path = settings.resolve_model(params.model, model_folder(), host.base)
    loaded = _cache.get(path, device=host.device, dtype=host.dtype, storage_dtype=host.storage_dtype)
    loaded.model.to(device=host.device)  # it may have been moved to the CPU after the last job
    try:
        validate_window_params(params.window, loaded.spec.pe_length)
    except ValueError as error:
        raise ValueError(f"AnimateDiff: {error} ({os.path.basename(path)} is {loaded.spec.label})") from None
    job.loaded, job.host = loaded, host
    host_model.open_model_steps(session, host, loaded, job.layout)
    _write_infotext(p, job)


def _check_same_model(job: Job) -> None:
    shared = _shared()
    if job.host is None:
        return
    unet = getattr(getattr(shared.sd_model, "model", None), "diffusion_model", None)
    if unet is not job.host.unet:
        raise RuntimeError(
            "AnimateDiff: the checkpoint changed during the job (hires checkpoint or refiner); "
            "AnimateDiff needs one checkpoint for the whole video: pick 'Use same checkpoint'"
        )


# --- postprocess -------------------------------------------------------------------------------


def _export(p: Any, processed: Any, job: Job) -> None:
    state = _shared().state
    state.job_count = int(getattr(state, "job_count", 0) or 0) + 1
    state.textinfo = "AnimateDiff: saving the video"
    params = job.params
    if ExportFormat.PNG in params.export.formats and not settings.value(_get(), "animatediff_save_to_custom"):
        formats = tuple(f for f in params.export.formats if f is not ExportFormat.PNG) or (ExportFormat.GIF,)
        params = dataclasses.replace(params, export=dataclasses.replace(params.export, formats=formats))
    output.export_processed(  # logs each failed format once, and lists it in processed.comments
        p,
        processed,
        params.export,
        frames_per_video=params.frames,
        closed_loop=params.window.closed_loop,
        context=params.window.context,
        request_id=params.request_id,
        for_grid=_in_xyz_grid(p),
    )
    state.nextjob()
    log.info("AnimateDiff: exported %s", ", ".join(f.value for f in params.export.formats))


def _in_xyz_grid(p: Any) -> bool:
    """True inside an X/Y/Z plot cell (the selected dropdown script), whose grid needs stills."""
    runner, script_args = getattr(p, "scripts", None), getattr(p, "script_args", None)
    try:
        index = int(script_args[0]) if script_args else 0
        selected = runner.selectable_scripts[index - 1] if index > 0 else None
    except (AttributeError, TypeError, ValueError, IndexError):
        return False
    return selected is not None and (selected.title() or "").lower().startswith("x/y/z")


# --- failures ----------------------------------------------------------------------------------


def _fail(p: Any, job: Job | None, message: str, status_code: int = 500) -> None:
    """Restore the host, then make the job stop with ``message`` where the WebUI lets it raise."""
    error = AnimateDiffError(
        message if message.startswith("AnimateDiff") else f"AnimateDiff: {message}", status_code
    )
    log.error("%s", error)
    if job is not None:
        job.error = job.error or error
        try:
            job.close("setup failed")
        except Exception as undo_error:  # already logged by the session; the job stops anyway
            log.error("AnimateDiff: restoring the WebUI after the failure also failed: %s", undo_error)

    def raiser(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    # The next step the WebUI takes outside the hooks: prompts (before process), init (after
    # process), sample, or the sampler itself when the failure happened inside p.sample.
    for name in ("setup_prompts", "init", "sample"):
        setattr(p, name, raiser)
    sampler = getattr(p, "sampler", None)
    if sampler is not None:
        for name in ("sample", "sample_img2img"):
            setattr(sampler, name, raiser)


# Errors the user fixes (a value, a file, a module that does not fit): HTTP 422, no type name.
_USER_ERRORS = (ValueError, AnimateDiffError, mm_injection.InjectionError, MotionModuleLoadError, OSError)


def _status(error: BaseException) -> int:
    return 422 if isinstance(error, _USER_ERRORS) else 500


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, _USER_ERRORS) else f"{type(error).__name__}: {text}"


def _requested_enable(p: Any, script_args: Sequence[Any]) -> bool:
    overrides = getattr(p, ad_args.XYZ_ATTR, None) or {}
    args = list(script_args)
    if "enable" in overrides:
        raw = overrides["enable"]
    elif args and isinstance(args[0], dict):
        raw = args[0].get("enable", False)
    elif args and hasattr(args[0], "enable"):
        raw = args[0].enable
    else:
        raw = args[1] if len(args) > 1 else False
    try:
        return bool(coerce_field("enable", raw))
    except ValueError:
        return True
