"""One Stable Video Diffusion job, for the SVD tab and ``POST /animatediff/v1/svd``.

The request's values -> checked ``SvdParams`` and the input image -> under the WebUI's queue lock
(so it never runs beside another generation) and on its progress bar: the memory plan (from the
file's header, before the weights are read), the cached model, the engine's ``generate``, one
``export`` call -> ``SvdOutcome``. ``plan_preview`` gives the tab the same plan before any job. The engine
(``motion_module.svd.pipeline``) imports no WebUI module; here it meets the WebUI: Settings, the
device, the queue lock, ``shared.state`` (written only through ``host_changes``) and the output
folder. WebUI modules are imported inside functions, so tests run this with small fakes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import io
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from motion_module.export import ExportResult, VideoTarget, export
from motion_module.params import ClosedLoop, ParamsError, WindowParams
from motion_module.svd import pipeline
from motion_module.svd.checkpoint import default_frames_for
from motion_module.svd.params import SvdParams, parse_svd_params

from . import host_changes, settings
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

SUFFIXES = (".safetensors", ".ckpt")
JOB_NAME = "animatediff_svd"  # shared.state.job while an SVD job runs
SUBFOLDER = "AnimateDiff/svd"  # under the img2img output folder, one folder per date below it
INFOTEXT_KEY = "SVD"
INTERRUPTED_KEY = "SVD interrupted"
INFOTEXT_FIELDS = (
    "model",
    "frames",
    "width",
    "height",
    "steps",
    "seed",
    "fps",
    "motion_bucket_id",
    "noise_aug_strength",
    "min_guidance",
    "max_guidance",
)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PLAN_FIELDS = ("model", "width", "height", "frames", "decode_chunk")  # what the plan depends on
CKPT_PLAN = "the memory plan follows the load: a .ckpt has no header, its shapes come with its weights"
STAGE_TEXT = {"encoding": "encoding the image", "sampling": "sampling", "decoding": "decoding"}


@dataclass
class SvdOutcome:
    """What a job produced. ``frames`` is empty when it was interrupted before its first step;
    ``export`` is None then."""

    params: SvdParams  # as requested (seed -1, frames 0 stay as asked)
    model: str  # the file name the job used
    seed: int
    frames: list[Image.Image] = field(repr=False)
    steps_done: int
    interrupted: bool
    info: str  # the infotext written into the files
    plan: str  # the memory plan's line, as logged and shown on the progress bar before sampling
    export: ExportResult | None = None


# --- WebUI access (imported lazily) -----------------------------------------------------------


def _shared() -> Any:
    from modules import shared

    return shared


def _get() -> settings.Getter:
    return settings.getter(_shared().opts)


def _devices() -> Any:
    from modules import devices

    return devices


def _progress() -> Any:
    from modules import progress

    return progress


@contextlib.contextmanager
def _queue_lock() -> Iterator[None]:
    """The WebUI's own queue lock: every generation (UI or API) runs inside it, one at a time."""
    from modules.call_queue import queue_lock

    with queue_lock:
        yield


def finish_task(task_id: str) -> None:
    """Tell the page's progress bar that the task ``task_id`` is over."""
    _progress().finish_task(task_id)


# --- Settings, folders, model files ---------------------------------------------------------


def model_folder(get: settings.Getter | None = None) -> str:
    """The folder of SVD checkpoints (Settings, else ``<models>/svd``), created if missing."""
    get = get or _get()
    folder = settings.value(get, "animatediff_svd_model_path")
    if not folder:
        from modules import paths

        folder = os.path.join(paths.models_path, "svd")
    folder = os.path.abspath(os.path.expanduser(folder))
    os.makedirs(folder, exist_ok=True)
    return folder


def model_choices() -> list[str]:
    return settings.list_models(model_folder(), SUFFIXES)


def resolve_model(name: str, folder: str, available: list[str]) -> str:
    """The checkpoint a request names (empty: the first in the folder) -> its path, or a refusal
    naming ``model`` and listing what the folder holds. Never leaves ``folder``."""
    listed = ", ".join(available) or "none"
    if not name and available:
        log.info("SVD: no model chosen; using %s", available[0])
        name = available[0]
    path = os.path.normpath(os.path.join(folder, name)) if name else ""
    if name in available and path.startswith(os.path.normpath(folder) + os.sep) and os.path.isfile(path):
        return path
    raise ParamsError(
        f"SVD: model = {name!r} is not allowed; expected a checkpoint file in {folder} "
        f"(available: {listed}). Put svd.safetensors or svd_xt.safetensors there and refresh",
        enable=True,
    )


def weight_dtype(choice: str, device: torch.device, no_half: bool) -> torch.dtype:
    """The dtype the weights are loaded in: the setting, or for ``auto`` float16 on a GPU and
    float32 on the CPU (where half precision is slow or missing) or with ``--no-half``."""
    if choice in DTYPES:
        return DTYPES[choice]
    return torch.float32 if device.type == "cpu" or no_half else torch.float16


def memory_settings(get: settings.Getter) -> pipeline.SvdMemory:
    return pipeline.SvdMemory(
        offload=bool(settings.value(get, "animatediff_svd_offload")),
        ff_chunk=int(settings.value(get, "animatediff_svd_ff_chunk") or 0),
    )


@dataclass(frozen=True)
class Placement:
    """Where and how a job runs, from the WebUI's device and Settings: the same for the plan
    shown before a job and for the job."""

    device: torch.device
    dtype: torch.dtype
    memory: pipeline.SvdMemory


def placement(get: settings.Getter) -> Placement:
    shared = _shared()
    device = _devices().get_device_for("svd")
    dtype = weight_dtype(
        str(settings.value(get, "animatediff_svd_dtype")),
        device,
        bool(getattr(shared.cmd_opts, "no_half", False)),
    )
    return Placement(device, dtype, memory_settings(get))


def base_params(get: settings.Getter | None = None) -> SvdParams:
    """What every request starts from: the defaults, with the decode chunk from Settings."""
    get = get or _get()
    return SvdParams(decode_chunk=int(settings.value(get, "animatediff_svd_decode_chunk") or 0))


# --- The request ----------------------------------------------------------------------------


def decode_image(value: Any) -> Image.Image:
    """The input image from the tab (PIL or array) or the API (base64, optionally a ``data:``
    URL; never a path, so a request cannot read the server's files)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if hasattr(value, "shape"):
        return Image.fromarray(value).convert("RGB")
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text.strip(), validate=True)))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as error:
        raise ParamsError(
            f"SVD: image = {value[:40]!r}... is not allowed ({error}); expected a PNG or JPEG image as "
            "base64, optionally a data: URL",
            enable=True,
        ) from None
    return image.convert("RGB")


def parse_request(source: Mapping[str, Any]) -> tuple[SvdParams, Image.Image]:
    """The tab's values or the API's JSON -> parameters (Settings as the base) and the image.
    Raises ``ParamsError`` naming the field."""
    params = parse_svd_params(source, base=base_params())
    if params.image is None or isinstance(params.image, str) and not params.image.strip():
        raise ParamsError(
            "SVD: image is missing; expected the input picture (the tab's image, or base64 PNG/JPEG "
            "in the request's 'image')",
            enable=True,
        )
    return params, decode_image(params.image)


# --- Infotext -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def infotext(
    params: SvdParams, model: str, frames: int, seed: int, steps_done: int, interrupted: bool
) -> str:
    """``SVD: "model: svd_xt.safetensors, frames: 25, ..."``: the values that made the video, keyed
    like the API (so ``read_infotext`` gives a request back); plus how far an interrupted job got."""
    values = {**{key: getattr(params, key) for key in INFOTEXT_FIELDS}, "model": model, "frames": frames}
    values["seed"] = seed
    entry = ", ".join(f"{key}: {_text(values[key])}" for key in INFOTEXT_FIELDS)
    text = f"{INFOTEXT_KEY}: {json.dumps(entry)}"
    if interrupted:
        text += f", {INTERRUPTED_KEY}: {json.dumps(f'after step {steps_done} of {params.steps}')}"
    return text


def read_infotext(text: str) -> dict[str, str]:
    """The SVD entry of an infotext -> {api key: text}; empty if there is none."""
    start = text.find(f"{INFOTEXT_KEY}: ")
    if start < 0:
        return {}
    entry, _end = json.JSONDecoder().raw_decode(text, start + len(INFOTEXT_KEY) + 2)
    pairs = (part.partition(": ") for part in entry.split(", "))
    return {key: value for key, _sep, value in pairs}


# --- The loaded model (one at a time) ----------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    path: str
    mtime_ns: int
    size: int
    dtype: torch.dtype


def _key(path: str, dtype: torch.dtype) -> _Key:
    stat = os.stat(path)
    return _Key(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, dtype)


# Kept between jobs on purpose (an SVD checkpoint is several GB); at most one entry.
_cache: dict[_Key, pipeline.SvdModel] = {}
# The models the plans are read from: networks on the meta device (no weights, a few MB of module
# objects each), None for a .ckpt; the newest few, for a tab switching between models.
_shapes: dict[_Key, pipeline.SvdModel | None] = {}
SHAPES_KEPT = 4
_shapes_lock = threading.Lock()


def model_shapes(path: str, dtype: torch.dtype) -> pipeline.SvdModel | None:
    """The model of ``path`` in ``dtype`` built from the file's header alone (see
    ``pipeline.load_svd_shapes``); kept while the file (time, size) does not change."""
    key = _key(path, dtype)
    with _shapes_lock:  # the tab's change events run in gradio's worker threads
        if key not in _shapes:
            shapes = pipeline.load_svd_shapes(path, dtype=dtype)
            while len(_shapes) >= SHAPES_KEPT:
                del _shapes[next(iter(_shapes))]
            _shapes[key] = shapes
        return _shapes[key]


def cached_model(path: str, dtype: torch.dtype) -> pipeline.SvdModel:
    """The model of ``path`` in ``dtype``: the cached one if neither the file (time, size) nor the
    dtype changed since; otherwise the old one is released first, then the file is loaded."""
    key = _key(path, dtype)
    if key in _cache:
        return _cache[key]
    forget_model(f"loading {os.path.basename(path)}")
    log.info("SVD: loading %s (%s)", path, str(dtype).removeprefix("torch."))
    model = pipeline.load_svd(path, dtype=dtype)
    _cache[key] = model
    return model


def forget_model(reason: str = "cleared") -> None:
    """Drop the cached model and give its memory back (refresh, unload, a new model)."""
    if not _cache:
        return
    names = ", ".join(os.path.basename(key.path) for key in _cache)
    _cache.clear()
    gc.collect()
    with contextlib.suppress(ImportError):  # tests without a WebUI
        _devices().torch_gc()
    log.info("SVD: released %s (%s)", names, reason)


# --- The memory plan ------------------------------------------------------------------------


def describe_plan(model: pipeline.SvdModel, params: SvdParams, where: Placement) -> str:
    return pipeline.memory_plan(model, params, where.memory, where.device).describe()


def plan_preview(values: Mapping[str, Any]) -> str:
    """The plan line for the tab's current choices (``PLAN_FIELDS``), before any job: from the
    file's header, no weight read. A value or file the job would refuse gives the refusal, a
    ``.ckpt`` says its plan comes after loading."""
    if not values.get("model"):
        return "SVD: choose a model for its memory plan"
    get = _get()
    try:
        params = parse_svd_params({key: values[key] for key in PLAN_FIELDS}, base=base_params(get))
        folder = model_folder(get)
        path = resolve_model(params.model, folder, settings.list_models(folder, SUFFIXES))
        where = placement(get)
        shapes = model_shapes(path, where.dtype)
    except (ParamsError, pipeline.SvdCheckpointError) as error:
        return str(error)
    if shapes is None:
        return f"{params.model}: {CKPT_PLAN}"
    return describe_plan(shapes, params, where)


def frames_hint(model: str | None) -> str:
    """The frames field's hint for ``model``: the count 0 stands for, from the file name."""
    if not model:
        return "0 = the model's own count: 14 for SVD, 25 for SVD-XT"
    frames = default_frames_for(model)
    return f"0 = the model's own count: {frames} for {os.path.basename(model)} (from its file name)"


# --- The job --------------------------------------------------------------------------------


def output_folder() -> str:
    """The WebUI's img2img output folder (SVD turns an image into a video), as its img2img tab
    uses; ``SUBFOLDER`` and the date go below it. Read as attributes: ``opts.data`` holds only
    what config.json set, the WebUI's own defaults come through ``opts.<key>``."""
    opts = _shared().opts
    folder = getattr(opts, "outdir_samples", "") or getattr(opts, "outdir_img2img_samples", "")
    if not folder:
        from modules import paths

        folder = os.path.join(paths.data_path, "outputs", "img2img-images")
    return folder


def run(params: SvdParams, image: Image.Image, *, task_id: str | None = None) -> SvdOutcome:
    """Run one job inside the queue lock, on the progress bar; the progress bar and the lock are
    given back in every case (``finally``). Raises ``ParamsError`` / ``SvdCheckpointError`` for
    what the request can fix, anything else for what it cannot."""
    get = _get()
    folder = model_folder(get)
    path = resolve_model(params.model, folder, settings.list_models(folder, SUFFIXES))
    where = placement(get)
    shared, progress = _shared(), _progress()
    if task_id:
        progress.add_task_to_queue(task_id)
    with _queue_lock():
        session = PatchSession("SVD")
        try:
            host_changes.svd_job(session, shared.state, JOB_NAME, params.steps)
            if task_id:
                progress.start_task(task_id)
            return _sample_and_save(params, image, path, folder, where)
        finally:
            try:
                session.close()
            finally:
                if task_id:
                    progress.finish_task(task_id)
                if not settings.value(get, "animatediff_svd_keep_loaded"):
                    forget_model("Settings: do not keep the model loaded")


def _sample_and_save(
    params: SvdParams, image: Image.Image, path: str, folder: str, where: Placement
) -> SvdOutcome:
    """The plan first (logged once, and on the progress bar from then on), then load, sample,
    save. A ``.safetensors`` file is planned from its header before its weights are read; a
    ``.ckpt`` once it is loaded."""
    state = _shared().state
    name = os.path.relpath(path, folder).replace(os.sep, "/")
    frames = params.frames or default_frames_for(name)
    shapes = model_shapes(path, where.dtype)
    plan = describe_plan(shapes, params, where) if shapes is not None else ""

    def show(text: str) -> None:
        host_changes.svd_status(state, f"SVD: {text}. {plan or CKPT_PLAN}")

    def announce() -> None:
        log.info(
            "SVD: %s, %d frames at %dx%d, %d steps; %s",
            name,
            frames,
            params.width,
            params.height,
            params.steps,
            plan,
        )

    if plan:
        announce()
    show(f"loading {name}")
    model = cached_model(path, where.dtype)
    if not plan:
        plan = describe_plan(model, params, where)
        announce()

    def on_step(done: int, total: int) -> None:
        host_changes.svd_step(state, done, total, f"SVD: step {done}/{total}. {plan}")

    def should_stop() -> bool:
        return bool(state.interrupted or state.skipped)

    try:
        result = pipeline.generate(
            model,
            image,
            params,
            device=where.device,
            memory=where.memory,
            on_step=on_step,
            should_stop=should_stop,
            on_stage=lambda stage: show(STAGE_TEXT[stage]),
        )
    except pipeline.SvdInterrupted:
        log.info("SVD: interrupted before the first step; nothing to save")
        info = infotext(params, name, frames, params.seed, 0, True)
        return SvdOutcome(params, name, params.seed, [], 0, True, info, plan)
    if result.interrupted:
        log.info("SVD: interrupted after step %d of %d; saving what it had", result.steps_done, params.steps)
    info = infotext(params, name, len(result.frames), result.seed, result.steps_done, result.interrupted)
    target = VideoTarget(output_folder(), result.seed, info, params.request_id, folder=SUBFOLDER)
    exported = export(result.frames, params.export_params(), WindowParams(closed_loop=ClosedLoop.N), target)
    return SvdOutcome(
        params, name, result.seed, result.frames, result.steps_done, result.interrupted, info, plan, exported
    )
