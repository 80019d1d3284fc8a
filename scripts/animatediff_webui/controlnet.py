"""Host seam for video-to-video with sd-webui-controlnet: the video becomes every unit's input.

sd-webui-controlnet (1.1.4xx) supports AnimateDiff itself once a unit is in batch mode with
``animatediff_batch`` set: in its ``process`` it loads the unit's batch folder (first line of
``batch_images``; further lines ``mask:<folder>`` and ``keyframe:i,j``), passes the file list
through the unit's ``batch_modifiers`` (``(files, p) -> files``), and makes one control image per
frame, ``p.batch_size`` of them, doubled to [cond | uncond] rows. It reads its units from
``p.script_args`` (dicts from the API, unit objects from the UI, converted on every read), so
the routed units are written back there (``host_changes.controlnet_units``) before its
``process`` runs, in our ``before_process``.

During sampling its UNet hook needs as many hint rows as the UNet call has rows; in a windowed
call that is the window's frames, so ``hint_inputs`` slices each control's ``hint_cond`` and
``hr_hint_cond`` per window (``motion_module.windows.PerFrameInputs``). Frames extracted from
a video live in a per-job temporary folder that the job removes when it closes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from motion_module.control_batch_input import (
    build_batch_input,
    check_keyframes,
    check_mask_count,
    parse_batch_input,
)
from motion_module.control_sources import Source, UnitInputs, resolve_frame_count, route_sources
from motion_module.media_paths import check_readable_path, list_frame_files
from motion_module.params import AnimateDiffParams
from motion_module.video_frames import decode_video_data, extract_frames
from motion_module.windows import PerFrameInputs

from . import host_changes

log = logging.getLogger("animatediff")

TITLE = "controlnet"
I2I_FOLDER_ATTR = "animatediff_i2i_batch_folder"  # set by the Batch tab (i2i_batch.FOLDER_ATTR)


@dataclass(frozen=True)
class VideoPlan:
    """What routing decided for one job: the frame count and fps to use, ControlNet's new
    arguments (None: nothing to change), and temporary folders the job removes at the end."""

    frames: int
    fps: float | None
    script_args: tuple | None
    temp_dirs: tuple[str, ...] = ()


def find_script(p: Any) -> Any | None:
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        if (script.title() or "").lower() == TITLE:
            return script
    return None


def _get(unit: Any, key: str, default: Any = None) -> Any:
    return unit.get(key, default) if isinstance(unit, dict) else getattr(unit, key, default)


def _is_unit(value: Any) -> bool:
    return isinstance(value, dict) or hasattr(value, "enabled") and hasattr(value, "module")


def _mode(unit: Any) -> str:
    mode = _get(unit, "input_mode", "simple")
    return str(getattr(mode, "value", mode) or "simple").lower()


def unit_inputs(unit: Any) -> UnitInputs:
    """A unit as routing sees it. The UI's image component hands over an empty dict or None
    when nothing was uploaded."""
    image = _get(unit, "image")
    has_image = image is not None and not (isinstance(image, dict | list | str) and not image)
    batch = _get(unit, "batch_images")
    has_folder = _mode(unit) == "batch" and isinstance(batch, str) and bool(batch.strip())
    return UnitInputs(
        enabled=bool(_get(unit, "enabled", False)),
        has_image=has_image and not has_folder,
        has_batch_folder=has_folder,
        has_mask=_get(unit, "mask") is not None or bool(_get(unit, "batch_mask_dir")),
    )


def _batch_unit(unit: Any, batch_images: str, files: list[str]) -> Any:
    """The unit in batch mode over ``files`` (ControlNet lists its folder itself; the modifier
    hands it our list: images only, natural order, as many as the video has frames)."""

    def modifier(_listed: list[str], _p: Any) -> list[str]:
        return list(files)

    changes = {
        "input_mode": "batch",
        "batch_images": batch_images,
        "animatediff_batch": True,
        "batch_modifiers": [modifier],
    }
    if isinstance(unit, dict):
        return unit | changes
    mode = _get(unit, "input_mode")
    changes["input_mode"] = type(mode)("batch") if hasattr(mode, "value") else "batch"
    if hasattr(unit, "copy") and callable(unit.copy):  # ControlNet's pydantic unit
        try:
            return unit.copy(update=changes)
        except TypeError:
            pass
    clone = dataclasses.replace(unit, **changes) if dataclasses.is_dataclass(unit) else None
    if clone is None:
        import copy

        clone = copy.copy(unit)
        vars(clone).update(changes)
    return clone


def plan_video(
    p: Any,
    params: AnimateDiffParams,
    *,
    allowed_roots: Sequence[str] | None,
    keep_frames: bool,
    init_images: int = 0,
) -> VideoPlan:
    """Route the panel's video, frame folder and masks to the ControlNet units and work out the
    frame count. ``init_images``: img2img with one init image per frame (more than one) counts
    as a source of that many frames. Raises ValueError naming the field for every bad input;
    changes nothing."""
    own = {"img2img init images": init_images} if init_images > 1 else {}
    frames = resolve_frame_count(params.video_length, own) or params.window.context
    cn = find_script(p)
    wants_video = bool(params.video_source or params.video_path or params.mask_path)
    if cn is None:
        if wants_video:
            field = (
                "video_source" if params.video_source else "video_path" if params.video_path else "mask_path"
            )
            value = str(getattr(params, field))
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise ValueError(
                f"AnimateDiff: {field} = {shown!r} needs the sd-webui-controlnet extension, which is not "
                "installed; install it, or leave Video source, Video path and Mask path empty"
            )
        return VideoPlan(frames, None, None)

    args = list(getattr(p, "script_args", None) or ())
    slots = [i for i in range(cn.args_from, min(cn.args_to, len(args))) if _is_unit(args[i])]
    units = [args[i] for i in slots]
    inputs = [unit_inputs(unit) for unit in units]
    if wants_video and not any(u.enabled for u in inputs):
        raise ValueError(
            "AnimateDiff: a video was given (video_source/video_path), but no ControlNet unit is enabled; "
            "enable a unit (with no image of its own) to control the frames with the video"
        )
    if not any(u.enabled and (u.has_batch_folder or not u.has_image) for u in inputs):
        if wants_video:
            raise ValueError(
                "AnimateDiff: a video was given (video_source/video_path), but every enabled ControlNet unit "
                "has an image of its own; leave a unit's image empty so it takes the video"
            )
        return VideoPlan(frames, None, None)

    temp_dirs: list[str] = []
    i2i_folder = str(getattr(p, I2I_FOLDER_ATTR, "") or "")
    try:
        return _route(
            params, cn, args, slots, units, inputs, allowed_roots, temp_dirs, keep_frames, own, i2i_folder
        )
    except BaseException:
        _remove(temp_dirs)
        raise


def _route(
    params, cn, args, slots, units, inputs, allowed_roots, temp_dirs, keep_frames, own_counts, i2i_folder
) -> VideoPlan:
    fps = None
    source_folder = ""
    if params.video_source and not (i2i_folder or params.video_path):  # those come first
        work = tempfile.mkdtemp(prefix="animatediff-v2v-")
        temp_dirs.append(work)
        video = decode_video_data(params.video_source, work)
        if not str(video).startswith(work):
            check_readable_path(video, "video_source", allowed_roots)
        info = extract_frames(video, Path(work) / "frames")
        source_folder, fps = str(info.folder), info.fps
    video_path = ""
    if params.video_path:
        list_frame_files(params.video_path, "video_path", allowed_roots)
        video_path = params.video_path
    mask_path = ""
    if params.mask_path:
        list_frame_files(params.mask_path, "mask_path", allowed_roots)
        mask_path = params.mask_path
    routes = route_sources(
        inputs,
        i2i_batch_folder=i2i_folder,
        video_path=video_path,
        video_source_folder=source_folder,
        mask_path=mask_path,
    )

    counts: dict[str, int] = dict(own_counts)
    batches: dict[int, tuple[str, str | None, tuple[int, ...] | None, list[str]]] = {}
    for k, (unit, route) in enumerate(zip(units, routes, strict=True)):
        if route.source is Source.OWN_FOLDER:
            folder, mask, keyframes = parse_batch_input(_get(unit, "batch_images"))
            field = f"ControlNet unit {k} batch folder"
            files = list_frame_files(folder, field, allowed_roots)
        elif route.source in (Source.VIDEO_PATH, Source.VIDEO_SOURCE, Source.I2I_BATCH):
            folder, mask, keyframes = route.folder, None, None
            field = {Source.VIDEO_PATH: "video_path", Source.VIDEO_SOURCE: "video_source"}.get(
                route.source, "img2img batch input folder"
            )
            files = list_frame_files(
                folder, field, None if route.source is Source.VIDEO_SOURCE else allowed_roots
            )
        else:
            continue
        mask = route.mask_folder or mask
        if mask is not None:
            masks = list_frame_files(mask, "mask_path", allowed_roots)
            check_mask_count(len(masks), len(files))
        if keyframes is None:
            counts[field] = len(files)
        batches[k] = (folder, mask, keyframes, files)

    frames = resolve_frame_count(params.video_length, counts) or params.window.context
    new_args = list(args)
    for k, (folder, mask, keyframes, files) in batches.items():
        if keyframes is not None:
            check_keyframes(keyframes, frames, len(files))
        else:
            files = files[:frames]
        new_args[slots[k]] = _batch_unit(units[k], build_batch_input(folder, mask, keyframes), files)
    if batches:
        log.info(
            "AnimateDiff: %d frames from %s for ControlNet unit(s) %s",
            frames,
            ", ".join(sorted(counts)) or "keyframes",
            ", ".join(str(k) for k in batches),
        )
    kept = () if keep_frames else tuple(temp_dirs)
    if keep_frames and temp_dirs:
        log.info("AnimateDiff: extracted frames kept in %s", ", ".join(temp_dirs))
    return VideoPlan(frames, fps, tuple(new_args) if batches else None, kept)


def _remove(folders: Sequence[str]) -> None:
    import shutil

    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def remove_temp_dirs(plan: VideoPlan | None) -> None:
    if plan is not None:
        _remove(plan.temp_dirs)


# --- IP-Adapter embeddings per frame ---------------------------------------------------------------

IP_ADAPTER_MODEL_MODULE = "scripts.ipadapter.ipadapter_model"


@dataclass(frozen=True)
class FrameEmbedding:
    """An IP-Adapter embedding ControlNet made for the frames of an AnimateDiff batch unit (one
    ``cond_emb`` row per frame, or per image). ControlNet builds it as ``ImageEmbed(cond,
    uncond, True)``; the third value (``ready``) marks it as final, not to be averaged. Not a
    tuple: ControlNet's IP-Adapter would take a tuple for a list of images."""

    cond_emb: torch.Tensor
    uncond_emb: torch.Tensor
    ready: bool = True


def ip_adapter_per_frame(session: Any, p: Any, batch_cond_uncond: Callable[[], bool]) -> None:
    """Let an IP-Adapter unit's per-frame embeddings (``keyframe:`` lines, or one image per
    frame) through sd-webui-controlnet for this job.

    ControlNet 1.1.4xx builds them as ``ImageEmbed(cond, uncond, True)`` in its script's
    ``process``, but its ``ImageEmbed`` lost the third field (and its IP-Adapter the code that
    took such an embedding as is): the call raises TypeError, which the WebUI logs before going
    on without the unit. For the job, the script's ``ImageEmbed`` name is ``FrameEmbedding``
    and the IP-Adapter's ``get_image_emb`` turns one into ControlNet's ``ImageEmbed``; nothing
    else changes. Its adapter needs one cond row per UNet row: ControlNet repeats keyframe
    embeddings for the uncond rows when the WebUI batches cond and uncond
    (``batch_cond_uncond()``), but not one image per frame, so such an embedding (one row per
    frame, ``p.batch_size``) is repeated here. Skipped without ControlNet, or when its
    ``ImageEmbed`` takes three values (a ControlNet that still handles this itself)."""
    cn = find_script(p)
    model_module = sys.modules.get(IP_ADAPTER_MODEL_MODULE)
    process = getattr(type(cn), "process", None) if cn is not None else None
    script_globals = getattr(process, "__globals__", None)
    if model_module is None or not isinstance(script_globals, dict):
        return
    image_embed = getattr(model_module, "ImageEmbed", None)
    adapter_cls = getattr(model_module, "IPAdapterModel", None)
    if script_globals.get("ImageEmbed") is not image_embed or adapter_cls is None:
        return
    if len(getattr(image_embed, "_fields", ())) != 2:
        return

    def to_image_embed(embedding: FrameEmbedding) -> Any:
        cond = embedding.cond_emb
        frames = int(getattr(p, "batch_size", 0) or 0)
        if frames > 1 and cond.shape[0] == frames and batch_cond_uncond():
            cond = torch.cat([cond, cond])  # [cond rows | uncond rows], as ControlNet's keyframes
        return image_embed(cond, embedding.uncond_emb)

    host_changes.ip_adapter_per_frame(session, script_globals, adapter_cls, FrameEmbedding, to_image_embed)


# --- sampling ------------------------------------------------------------------------------------


def hint_inputs(p: Any, frames: int) -> PerFrameInputs | None:
    """Per-window access to every ControlNet control's hints (None without ControlNet).

    Read at each windowed call, since ControlNet builds its controls after our hooks ran. A
    hint whose rows are not a whole number of videos (one image for every frame, an IP-Adapter
    with one image) is shared by all windows and left alone; an IP-Adapter embedding with one row
    per frame (keyframes) is sliced like a hint.

    ControlNet's IP-Adapter evaluates its embedding inside every cross-attention layer against
    the cond marks ControlNet puts on the UNet model at the start of each call (one per row), so
    when motion-module mode runs those layers over chunks of the call's rows, the embedding and
    the marks are sliced to each chunk too. The adapter keeps each layer's key and value
    projections of the evaluated embedding for the whole job, made by the first call; they are
    dropped whenever the rows change (each call and chunk), or later windows and chunks would
    run with the first one's.

    ControlNet makes every frame's hint at once, on the device the UNet runs on. The first read
    moves a per-frame hint to the CPU (once); each call then gets its window's rows moved to the
    UNet's device, so the device holds one window's hints instead of the whole video's.
    """
    cn = find_script(p)
    if cn is None:
        return None
    inputs = PerFrameInputs()

    def params() -> list[Any]:
        network = getattr(cn, "latest_network", None)
        return list(getattr(network, "control_params", None) or [])

    def getter(index: int, name: str):
        def get() -> torch.Tensor | None:
            controls = params()
            hint = getattr(controls[index], name, None) if index < len(controls) else None
            per_frame = isinstance(hint, torch.Tensor) and hint.dim() > 0 and hint.shape[0] % frames == 0
            if not per_frame or hint.shape[0] < frames:
                return None
            return host_changes.hint_on_cpu(controls[index], name, hint)

        return get

    def setter(index: int, name: str):
        return lambda value: host_changes.window_hint(params()[index], name, value)

    def embedding(index: int) -> tuple[Any, Any]:
        """An IP-Adapter unit's image embedding (ControlNet keeps it on its adapter, made once in
        its ``process``; with keyframes it holds one row per frame)."""
        controls = params()
        adapter = getattr(controls[index], "control_model", None) if index < len(controls) else None
        return adapter, getattr(adapter, "image_emb", None)

    def embedding_getter(index: int, part: str):
        def get() -> torch.Tensor | None:
            _adapter, emb = embedding(index)
            rows = getattr(emb, part, None)
            per_frame = isinstance(rows, torch.Tensor) and rows.dim() > 0 and rows.shape[0] % frames == 0
            return rows if per_frame and rows.shape[0] >= frames and hasattr(emb, "_replace") else None

        return get

    def embedding_setter(index: int, part: str):
        def put(value: torch.Tensor) -> None:
            adapter, emb = embedding(index)
            host_changes.window_hint(adapter, "image_emb", emb._replace(**{part: value}))

        return put

    def adapters() -> list[Any]:
        models = [getattr(control, "control_model", None) for control in params()]
        return [m for m in models if hasattr(m, "image_emb") and isinstance(getattr(m, "cache", None), dict)]

    def unet_model() -> Any:
        return getattr(getattr(cn, "latest_network", None), "model", None)

    def get_cond_mark() -> torch.Tensor | None:
        mark = getattr(unet_model(), "cond_mark", None) if adapters() else None
        return mark if isinstance(mark, torch.Tensor) and mark.dim() > 0 else None

    def clear_projections() -> None:
        for adapter in adapters():
            host_changes.ip_adapter_projections_cleared(adapter)

    for index in range(8):  # ControlNet offers at most 8 units; absent ones read as None
        for name in ("hint_cond", "hr_hint_cond"):
            inputs.add(f"ControlNet {index} {name}", getter(index, name), setter(index, name))
        for part in ("cond_emb", "uncond_emb"):
            inputs.add(
                f"IP-Adapter {index} {part}",
                embedding_getter(index, part),
                embedding_setter(index, part),
                per_chunk=True,
            )
    inputs.add(
        "IP-Adapter cond marks",
        get_cond_mark,
        lambda value: host_changes.window_hint(unet_model(), "cond_mark", value),
        per_call=False,  # ControlNet makes them at the start of each UNet call
        per_chunk=True,
    )
    inputs.add_reset(clear_projections)
    return inputs
