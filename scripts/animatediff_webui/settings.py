"""Settings → AnimateDiff: the options table, its registration, and reading it into defaults.

Keys match the predecessor extension's (``animatediff_model_path``, ``animatediff_mp4_crf``, ...)
where they mean the same, so existing config.json entries keep working. ``base_params`` turns the
current option values into the ``AnimateDiffParams`` every parse starts from; it takes a plain
getter, so it runs without a WebUI.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from motion_module.params import (
    DEFAULT_MODEL,
    AnimateDiffParams,
    ExportFormat,
    Fusion,
    TravelInterpolation,
    WindowMode,
    coerce_field,
)

log = logging.getLogger("animatediff")

SECTION = ("animatediff", "AnimateDiff")
SAVE_FORMATS = [f.value for f in ExportFormat if f is not ExportFormat.FRAME]
MP4_PRESETS = [
    "",
    "veryslow",
    "slower",
    "slow",
    "medium",
    "fast",
    "faster",
    "veryfast",
    "superfast",
    "ultrafast",
]
MP4_TUNES = ["", "film", "animation", "grain", "stillimage", "fastdecode", "zerolatency"]


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    component: str = ""  # "", "checkboxes", "slider", "dropdown", "radio", "number"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    info: str = ""


OPTIONS: tuple[Option, ...] = (
    Option(
        "animatediff_model_path",
        "",
        "Motion-module folder (empty: the extension's model/ folder)",
        info="Searched recursively; --animatediff-model-dir on the command line wins over this",
    ),
    Option(
        "animatediff_default_save_formats",
        ["GIF", "PNG"],
        "Default save formats",
        "checkboxes",
        {"choices": SAVE_FORMATS},
        "Preselected in the panel (reload the UI to apply)",
    ),
    Option(
        "animatediff_save_to_custom",
        True,
        "Save PNG frames into the AnimateDiff folder",
        info="Off: frames go through the WebUI's own image saving",
    ),
    Option("animatediff_optimize_gif_palette", False, "GIF: one optimised global palette"),
    Option("animatediff_optimize_gif_gifsicle", False, "GIF: optimise with gifsicle (if installed)"),
    Option(
        "animatediff_mp4_crf",
        23,
        "MP4: CRF (lower = better, bigger)",
        "slider",
        {"minimum": 0, "maximum": 51, "step": 1},
    ),
    Option("animatediff_mp4_preset", "", "MP4: x264 preset", "dropdown", {"choices": MP4_PRESETS}),
    Option("animatediff_mp4_tune", "", "MP4: x264 tune", "dropdown", {"choices": MP4_TUNES}),
    Option(
        "animatediff_webp_quality", 80, "WebP: quality", "slider", {"minimum": 1, "maximum": 100, "step": 1}
    ),
    Option("animatediff_webp_lossless", False, "WebP: lossless"),
    Option(
        "animatediff_window_fusion",
        Fusion.PYRAMID.value,
        "Window fusion of overlapping frames",
        "radio",
        {"choices": [f.value for f in Fusion]},
        "pyramid weights the window centre; flat averages",
    ),
    Option(
        "animatediff_frame_budget",
        32,
        "Frames per UNet call when batching windows (0 = one window)",
        "slider",
        {"minimum": 0, "maximum": 256, "step": 1},
        "Higher is faster and needs more memory",
    ),
    Option(
        "animatediff_window_mode",
        WindowMode.MOTION_MODULE.value,
        "What runs in context windows (the panel's default)",
        "radio",
        {"choices": [m.value for m in WindowMode]},
        "motion_module: only temporal attention, spatial layers over frame-budget chunks (faster); "
        "unet: whole UNet per window (the old extension's behaviour)",
    ),
    Option(
        "animatediff_travel_interpolation",
        TravelInterpolation.SLERP.value,
        "Prompt travel: interpolation between keyframes",
        "radio",
        {"choices": [t.value for t in TravelInterpolation]},
    ),
    Option(
        "animatediff_move_to_cpu",
        False,
        "Move the motion module to CPU between jobs",
        info="Frees VRAM between generations; the next job moves it back",
    ),
    Option(
        "animatediff_freeinit_coarse_to_fine",
        False,
        "FreeInit: fewer steps in the early iterations",
        info="Iteration i of n uses i/n of the steps; the last uses them all",
    ),
    Option(
        "animatediff_keep_frames",
        False,
        "Video-to-video: keep the frames extracted from a video",
        info="Off: they are deleted when the job ends; on: the folder is named in the console",
    ),
    Option(
        "animatediff_allowed_folders",
        "",
        "Video-to-video: folders requests may read when the WebUI listens beyond this machine",
        info="One per line. With --listen, --share or --server-name, Video path, Mask path and "
        "video files must lie inside the WebUI's data folder or one of these",
    ),
    # Stable Video Diffusion (the SVD tab and POST /animatediff/v1/svd)
    Option(
        "animatediff_svd_model_path",
        "",
        "SVD: model folder (empty: the WebUI's models/svd)",
        info="svd.safetensors, svd_xt.safetensors, svd_xt_1_1.safetensors (or .ckpt); the SVD tab's refresh "
        "button reads it again",
    ),
    Option(
        "animatediff_svd_offload",
        True,
        "SVD: keep each component on the CPU except while it runs",
        info="Image encoder, UNet and decoder take turns on the GPU: far less VRAM, a little slower",
    ),
    Option(
        "animatediff_svd_ff_chunk",
        0,
        "SVD: transformer feed-forward chunk (rows; 0 = no chunking)",
        "slider",
        {"minimum": 0, "maximum": 16384, "step": 64},
        "Smaller chunks lower the UNet's peak memory",
    ),
    Option(
        "animatediff_svd_decode_chunk",
        0,
        "SVD: frames per decoder call, the tab's and the API's default (0 = all frames at once)",
        "slider",
        {"minimum": 0, "maximum": 128, "step": 1},
        "Lower uses less memory when decoding",
    ),
    Option(
        "animatediff_svd_dtype",
        "auto",
        "SVD: weight dtype",
        "radio",
        {"choices": ["auto", "float16", "bfloat16", "float32"]},
        "auto: float16 on a GPU, float32 on the CPU or with --no-half; a change reloads the model",
    ),
    Option(
        "animatediff_svd_keep_loaded",
        True,
        "SVD: keep the last model loaded between jobs",
        info="Off frees its memory after every job (the next job reads the file again)",
    ),
)


def allowed_roots(get: Getter, cmd_opts: Any, data_path: str) -> list[str] | None:
    """Where requests may read media from: anywhere while the WebUI serves only this machine;
    otherwise only the WebUI's data folder and the folders named in the setting."""
    name = str(getattr(cmd_opts, "server_name", None) or "").strip().lower()
    public = bool(getattr(cmd_opts, "listen", None) or getattr(cmd_opts, "share", None)) or (
        name not in ("", "127.0.0.1", "localhost", "::1")
    )
    if not public:
        return None
    extra = [line.strip() for line in str(value(get, "animatediff_allowed_folders") or "").splitlines()]
    return [data_path, *(os.path.abspath(os.path.expanduser(folder)) for folder in extra if folder)]


def register(shared: Any, gr: Any) -> None:
    """on_ui_settings: add every option to the WebUI's options under the AnimateDiff section."""
    components = {
        "": None,
        "checkboxes": gr.CheckboxGroup,
        "slider": gr.Slider,
        "dropdown": gr.Dropdown,
        "radio": gr.Radio,
        "number": gr.Number,
    }
    for opt in OPTIONS:
        info = shared.OptionInfo(
            opt.default, opt.label, components[opt.component], dict(opt.args) or None, section=SECTION
        )
        if opt.info:
            info = info.info(opt.info) if hasattr(info, "info") else info
        shared.opts.add_option(opt.key, info)


Getter = Callable[[str, Any], Any]


def getter(opts: Any) -> Getter:
    """A getter over ``shared.opts`` that works before our options are registered (--nowebui)."""
    return lambda key, default: opts.data.get(key, default)


def value(get: Getter, key: str) -> Any:
    return get(key, next(o.default for o in OPTIONS if o.key == key))


def base_params(get: Getter) -> AnimateDiffParams:
    """Defaults for every parse: the built-in defaults with the settings applied."""
    base = AnimateDiffParams()
    formats = coerce_field("format", value(get, "animatediff_default_save_formats") or ["GIF"])
    export = dataclasses.replace(
        base.export,
        formats=formats,
        gif_palette=bool(value(get, "animatediff_optimize_gif_palette")),
        gifsicle=bool(value(get, "animatediff_optimize_gif_gifsicle")),
        mp4_crf=int(value(get, "animatediff_mp4_crf")),
        mp4_preset=str(value(get, "animatediff_mp4_preset") or ""),
        mp4_tune=str(value(get, "animatediff_mp4_tune") or ""),
        webp_quality=int(value(get, "animatediff_webp_quality")),
        webp_lossless=bool(value(get, "animatediff_webp_lossless")),
    )
    window = dataclasses.replace(
        base.window,
        fusion=Fusion(value(get, "animatediff_window_fusion")),
        frame_budget=int(value(get, "animatediff_frame_budget")),
        mode=WindowMode(value(get, "animatediff_window_mode")),
    )
    travel = TravelInterpolation(value(get, "animatediff_travel_interpolation"))
    freeinit = dataclasses.replace(
        base.freeinit, coarse_to_fine=bool(value(get, "animatediff_freeinit_coarse_to_fine"))
    )
    return dataclasses.replace(
        base, export=export, window=window, travel_interpolation=travel, freeinit=freeinit
    )


def model_dir(get: Getter, cmd_dir: str | None, extension_root: str) -> str:
    """Where motion modules live: the command-line flag, else the setting, else ``<ext>/model``."""
    folder = cmd_dir or value(get, "animatediff_model_path") or os.path.join(extension_root, "model")
    return os.path.abspath(os.path.expanduser(folder))


MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def list_models(folder: str, suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> list[str]:
    """Model files (motion modules by default) under ``folder`` (recursive), as sorted relative
    paths with '/'."""
    found: list[str] = []
    if not os.path.isdir(folder):
        return found
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.lower().endswith(suffixes):
                rel = os.path.relpath(os.path.join(root, name), folder)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found, key=str.casefold)


def models_for_base(names: list[str], base: str | None) -> list[str]:
    """Hide files whose names say they are for the other base model (the predecessor's rule).

    Names are only a hint; loading checks the real layout and refuses a mismatch with a message.
    """
    if base == "sdxl":
        return [n for n in names if not any(t in n.lower() for t in ("sd15", "sd_v1", "sd1"))]
    if base == "sd15":
        return [n for n in names if not any(t in n.lower() for t in ("xl", "hotshot"))]
    return names


def resolve_model(name: str, folder: str, base: str) -> str:
    """A motion-module name from the panel/API -> an existing file, or an error that lists them."""
    if name and not name.lower().endswith(MODEL_SUFFIXES):
        raise ValueError(
            f"AnimateDiff: model = {name!r} is not allowed; expected a motion-module file name "
            f"ending in {', '.join(MODEL_SUFFIXES)} from {folder}"
        )
    if name and os.path.isabs(name) and os.path.isfile(name):
        return name
    candidate = os.path.normpath(os.path.join(folder, name)) if name else ""
    if candidate and os.path.isfile(candidate) and candidate.startswith(os.path.normpath(folder) + os.sep):
        return candidate
    available = models_for_base(list_models(folder), base)
    if name in ("", DEFAULT_MODEL) and available:
        log.info("AnimateDiff: %s not found; using %s", name or "no motion module chosen", available[0])
        return os.path.join(folder, available[0])
    listed = ", ".join(available[:10]) or "none"
    raise ValueError(
        f"AnimateDiff: model = {name!r} was not found in {folder}; available for this checkpoint: "
        f"{listed}. Put motion-module files there (or set Settings → AnimateDiff → folder) and refresh"
    )
