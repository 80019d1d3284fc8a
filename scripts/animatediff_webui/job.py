"""One AnimateDiff generation as a typed object, and the work of each phase.

A ``Job`` is made in ``before_process`` from parameters parsed once, rides on its processing
object ``p`` and holds everything the later hooks need (the loaded module, the host model, the
travel plan, the img2vid latents), so nothing per job lives in a global. Every change to the
WebUI goes through ``host_changes`` into ``job.session`` and is undone by ``Job.close``, which
``postprocess``, ``p.close()``, the unload hook and the next job's start all call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from motion_module import spec as mm_spec
from motion_module.audio_analysis import mel_energy, onset_frames
from motion_module.audio_decode import load_audio
from motion_module.frames import FrameLayout
from motion_module.loading import LoadedMotionModule, MotionModuleCache, MotionModuleLoadError
from motion_module.motion_strength import MotionStrength
from motion_module.params import (
    INFOTEXT_KEY,
    AnimateDiffParams,
    ExportFormat,
    Onsets,
    TravelCurve,
    check_fits_module,
    infotext_value,
)
from motion_module.travel_curves import audio_reduction

from . import (
    conditioning,
    controlnet,
    failure,
    host_changes,
    host_model,
    img2vid,
    inpaint_masks,
    noise,
    output,
    settings,
)
from .args import as_image
from .failure import AnimateDiffError
from .lora_files import converter as lora_converter
from .model_choices import fitting
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

JOB_ATTR = "animatediff_job"  # the Job rides on its processing object
ONSETS_KEY = "AnimateDiff onsets"  # infotext entry: the audio's onsets as frame numbers
EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "0.1.0"

# Kept across jobs on purpose: re-reading a 1.7 GB file per job is slow. Cleared on script unload.
_cache = MotionModuleCache()
# The one open job, so the next job's start (or the unload hook) can close it if a failure
# skipped every other close path. The only module-level mutable state besides the cache.
_active: list[Job] = []


@dataclass
class Job:
    params: AnimateDiffParams
    is_img2img: bool
    owner: Callable[[], Any]  # weakref to the p this job belongs to
    move_to_cpu: bool = False  # setting: park the motion module on the CPU between jobs
    session: PatchSession = field(default_factory=lambda: PatchSession("AnimateDiff"))
    layout: FrameLayout = field(default_factory=FrameLayout)
    loaded: LoadedMotionModule | None = None
    host: host_model.HostModel | None = None
    travel: conditioning.TravelState | None = None
    img2vid: img2vid.StartLatents | None = None
    video: controlnet.VideoPlan | None = None  # video-to-video routing (ControlNet)
    frame_masks: list[Any] | None = None  # the Batch tab's inpaint masks, one per frame
    overlay_masks: list[Any] | None = None  # each frame's mask_for_overlay, made by p.init
    error: AnimateDiffError | None = None  # raised by p.sample once sampling returns or starts
    export_counted: bool = False  # the export's job is on the progress bar

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
            controlnet.remove_temp_dirs(self.video)
            if self.move_to_cpu and self.loaded is not None:
                self.loaded.model.to("cpu")
            log.info("AnimateDiff: session closed (%s); the WebUI is unchanged", reason)


# --- WebUI access (imported lazily: tests put small fakes into sys.modules) -------------------


def shared() -> Any:
    from modules import shared

    return shared


def _devices() -> Any:
    from modules import devices

    return devices


def _sd_models() -> Any:
    try:
        from modules import sd_models
    except ImportError:  # tests without a WebUI
        return None
    return sd_models


def _get() -> settings.Getter:
    return settings.getter(shared().opts)


def base_params() -> AnimateDiffParams:
    return settings.base_params(_get())


def model_folder() -> str:
    cmd_dir = getattr(getattr(shared(), "cmd_opts", None), "animatediff_model_dir", None)
    return settings.model_dir(_get(), cmd_dir, EXTENSION_ROOT)


def job_of(p: Any) -> Job | None:
    job = getattr(p, JOB_ATTR, None)
    return job if isinstance(job, Job) and job.open and job.owns(p) else None


def nested(p: Any) -> bool:
    """A generation started inside an open job (ADetailer on a copy of the job's ``p``)."""
    parent = getattr(p, JOB_ATTR, None)
    return isinstance(parent, Job) and parent.open and not parent.owns(p)


def close_stale(reason: str) -> None:
    for job in list(_active):
        log.warning("AnimateDiff: closing a session left open by an earlier job (%s)", reason)
        job.close(reason)


def forget_models() -> None:
    _cache.clear()


# --- before_process ----------------------------------------------------------------------------


def start(p: Any, params: AnimateDiffParams, is_img2img: bool) -> Job:
    move_to_cpu = bool(settings.value(_get(), "animatediff_move_to_cpu"))
    layout = FrameLayout(strength=motion_strength(params))
    job = Job(params, is_img2img, owner=weakref.ref(p), move_to_cpu=move_to_cpu, layout=layout)
    _active.append(job)
    return job


def motion_strength(params: AnimateDiffParams) -> MotionStrength:
    """The motion module's strength for this job; the mask image as an (h, w) map in 0..1."""
    motion = params.motion
    image = as_image(motion.mask, "motion_mask")
    mask = None
    if image is not None:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        mask = torch.from_numpy(gray)
    return MotionStrength(motion.scale, mask, motion.mask_min)


def prepare(p: Any, job: Job) -> None:
    """The ``p``-level changes the WebUI reads later: frames as the batch, prompts per frame."""
    session = job.session
    host_changes.tag_job(session, p, JOB_ATTR, job)
    roots = settings.allowed_roots(_get(), getattr(shared(), "cmd_opts", None), _data_path())
    job.params = params = _route_video(p, job, roots)
    frames = params.frames
    images = list(getattr(p, "init_images", None) or [])
    if job.is_img2img and 1 < len(images) != frames:
        raise ValueError(
            f"AnimateDiff img2img got {len(images)} init images for {frames} frames; "
            f"give one init image (img2vid) or exactly {frames} (one per frame)"
        )
    if job.is_img2img:
        job.frame_masks = inpaint_masks.frame_masks(p, frames)
    host_changes.subclass_processing(session, p, lambda base: _processing_class(base, job))
    host_changes.video_batch(session, p, frames, webui_saves_frames=_webui_saves_png(params))
    energy = _listen(p, job, roots)
    job.travel = conditioning.prepare_prompts(p, session, params, energy)
    _write_infotext(p, job)
    log.info(
        "AnimateDiff: %d frames × %d video(s), context %d, model %s",
        frames,
        int(getattr(p, "n_iter", 1) or 1),
        params.window.context,
        params.model,
    )


def _route_video(p: Any, job: Job, roots: list[str] | None) -> AnimateDiffParams:
    """ControlNet units take the video (or frame folder) as per-frame input; the frame count and
    fps may come from it. Returns the parameters the rest of the job uses."""
    params = job.params
    keep = bool(settings.value(_get(), "animatediff_keep_frames"))
    images = list(getattr(p, "init_images", None) or []) if job.is_img2img else []
    job.video = plan = controlnet.plan_video(
        p, params, allowed_roots=roots, keep_frames=keep, init_images=len(images)
    )
    if plan.script_args is not None:
        host_changes.controlnet_units(job.session, p, plan.script_args)
    controlnet.ip_adapter_per_frame(job.session, p, lambda: bool(shared().opts.batch_cond_uncond))
    if len(images) > plan.frames:  # one init image per frame: the first ones
        host_changes.init_images(job.session, p, images[: plan.frames])
    export = params.export
    if plan.fps is not None and "fps" not in params.given:
        export = dataclasses.replace(export, fps=max(1, round(plan.fps)))
    return dataclasses.replace(params, video_length=plan.frames, export=export)


def _listen(p: Any, job: Job, roots: list[str] | None) -> Any:
    """The soundtrack: read now (an unreadable file stops the job before anything runs), its
    onsets listed as frame numbers in the infotext when asked, and its energy per frame for the
    audio travel curve (returned; None without audio)."""
    params = job.params
    extras = params.extras
    if not extras.audio:
        return None
    fps, frames = params.export.fps, params.frames
    audio = load_audio(extras.audio, seconds=frames / fps, allowed_roots=roots)
    if extras.audio_onsets is not Onsets.OFF:
        onsets = onset_frames(audio, fps, extras.audio_onsets.value, frames=frames)
        host_changes.infotext_entry(p, ONSETS_KEY, " ".join(str(frame) for frame in onsets))
        log.info("AnimateDiff: %s onsets at frames %s", extras.audio_onsets.value, onsets)
    if extras.travel_curve is not TravelCurve.AUDIO:
        return None
    return mel_energy(audio, fps, frames, reduce=audio_reduction(extras.travel_curve_args))


def _data_path() -> str:
    try:
        from modules import paths

        return str(paths.data_path)
    except (ImportError, AttributeError):
        return os.getcwd()


def _processing_class(base: type, job: Job) -> type:
    """A subclass of ``p``'s class whose ``sample`` re-raises errors recorded during sampling
    (where hooks and callbacks cannot raise), whose ``init`` makes one inpaint mask per frame
    when the Batch tab gave them, and whose ``close`` closes the job first: the WebUI calls
    ``p.close()`` even after exceptions. Copies of ``p`` keep the class but only delegate."""

    class AnimateDiffProcessing(base):  # type: ignore[misc, valid-type]
        def init(self, all_prompts: Any, all_seeds: Any, all_subseeds: Any) -> Any:
            if not job.owns(self) or job.frame_masks is None:
                return base.init(self, all_prompts, all_seeds, all_subseeds)
            job.overlay_masks = inpaint_masks.init_per_frame(
                self, job.session, base.init, job.frame_masks, all_prompts, all_seeds, all_subseeds
            )
            return None

        def sample(self, *args: Any, **kwargs: Any) -> Any:
            if not job.owns(self):
                return base.sample(self, *args, **kwargs)
            if job.error is not None:
                raise job.error

            def run() -> Any:
                return base.sample(self, *args, **kwargs)

            if noise.active(job.params):
                try:
                    result = noise.sample(self, job.params, job.session, shared().state, run)
                except ValueError as error:
                    raise failure.as_error(error) from None
            else:
                result = run()
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
    return AnimateDiffProcessing


def _webui_saves_png(params: AnimateDiffParams) -> bool:
    """PNG frames are saved by the WebUI itself (with its file names and PNG info) unless the
    setting sends them to our output folder with the videos."""
    return ExportFormat.PNG in params.export.formats and not settings.value(
        _get(), "animatediff_save_to_custom"
    )


def _write_infotext(p: Any, job: Job) -> None:
    mm_hash = job.loaded.hash if job.loaded is not None else ""
    value = infotext_value(job.params, is_img2img=job.is_img2img, mm_hash=mm_hash, version=VERSION)
    host_changes.infotext_entry(p, INFOTEXT_KEY, value)


# --- process: the model -------------------------------------------------------------------------


def open_model(p: Any, job: Job) -> None:
    """Load the motion module for the model loaded now, check it fits, and change the model."""
    session, params = job.session, job.params
    host_changes.load_pending_weights(_sd_models(), _devices())
    host = host_model.current(shared(), _devices())
    path = settings.resolve_model(params.model, model_folder(), host.base)
    try:
        loaded = _cache.get(path, device=host.device, dtype=host.dtype, storage_dtype=host.storage_dtype)
    except MotionModuleLoadError as error:
        raise MotionModuleLoadError(
            f"AnimateDiff: model = {params.model!r} cannot be used: {error}"
        ) from None
    if loaded.spec.base != host.base:
        fits = fitting(model_folder(), settings.list_models(model_folder()), host.base)
        raise ValueError(
            host_model.base_mismatch(params.model, loaded.spec.label, loaded.spec.base, host, fits)
        )
    loaded.model.to(device=host.device)  # it may have been moved to the CPU after the last job
    check_fits_module(params, loaded.spec.pe_length, f"{os.path.basename(path)} ({loaded.spec.label})")
    job.loaded, job.host = loaded, host

    injected = host_changes.inject(session, host.unet, loaded, job.layout, host.base)
    log.info(
        "AnimateDiff: injected %s into the %s UNet (%d sites)",
        loaded.spec.label,
        host.base,
        len(injected.blocks),
    )
    host_changes.beta_schedule(session, host.sd_model, mm_spec.alphas_cumprod(loaded.spec))
    log.info("AnimateDiff: beta schedule %s", loaded.spec.beta_schedule.kind)
    if isinstance(getattr(host.sd_model, "network_layer_mapping", None), dict):
        layers = host_model.motion_layer_names(host.unet, injected)
        host_changes.lora_layer_names(session, host.sd_model, layers)
    host_changes.reread_lora_networks(session)
    host_changes.lora_file_reading(session, lora_converter(job, host.sd_model))
    host_changes.sparsectrl_layout(session, job.layout)
    host_changes.light_previews(session, shared().state)
    _write_infotext(p, job)


def check_same_model(job: Job) -> None:
    if job.host is None:
        return
    unet = getattr(getattr(shared().sd_model, "model", None), "diffusion_model", None)
    if unet is not job.host.unet:
        raise RuntimeError(
            "AnimateDiff: the checkpoint changed during the job (hires checkpoint or refiner); "
            "AnimateDiff needs one checkpoint for the whole video: pick 'Use same checkpoint'"
        )


# --- before every batch -------------------------------------------------------------------------


def count_export(job: Job) -> None:
    """Saving the video is a job of its own on the progress bar, counted from the first batch on
    (by then the WebUI has counted its own jobs: batches, hires passes)."""
    if not job.export_counted:
        host_changes.more_jobs(job.session, "export phase", shared().state, 1)
        job.export_counted = True


def blend_start_latents(p: Any, job: Job) -> None:
    """img2vid: each video's frames start from the init image (and last image) blended with noise."""
    if not job.is_img2img or getattr(p, "is_i2i_batch", False) or getattr(p, "init_latent", None) is None:
        return
    last = as_image(job.params.last_frame) if job.img2vid is None else None
    job.img2vid = img2vid.blend_init_latent(
        p, job.session, job.params.img2vid, job.img2vid, last_image=last, camera=job.params.extras
    )


# --- postprocess -------------------------------------------------------------------------------


def export(p: Any, processed: Any, job: Job) -> None:
    params = job.params
    if _webui_saves_png(params):  # the WebUI has written the PNG frames already
        formats = tuple(f for f in params.export.formats if f is not ExportFormat.PNG) or (ExportFormat.GIF,)
        params = dataclasses.replace(params, export=dataclasses.replace(params.export, formats=formats))
    state = shared().state
    host_changes.progress_text(state, "AnimateDiff: saving the video")
    output.export_processed(p, processed, params, for_grid=_in_xyz_grid(p))
    if job.export_counted:
        host_changes.next_phase(job.session, state, "AnimateDiff: video saved")
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
