"""The AnimateDiff panel (gradio 3.41, as pinned by WebUI v1.10.1), built from one widget table.

``build`` returns the components in ``motion_module.params.FIELDS`` order, so the UI's values,
the API's positional list and the parser agree by construction (a test checks it). It has no side
effects beyond creating components, so the WebUI may call it as often as it likes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from motion_module.params import (
    FIELD_KEYS,
    INFOTEXT_FIELDS,
    AnimateDiffParams,
    Border,
    ClosedLoop,
    FreeInitFilter,
    Interp,
    NoiseType,
    Onsets,
    TravelCurve,
    WindowMode,
    flatten,
)
from motion_module.video_frames import probe_video

from .args import PasteKey, ui_value
from .settings import SAVE_FORMATS


@dataclass(frozen=True)
class Widget:
    kind: str  # gradio class name
    label: str
    help: str = ""
    args: tuple[tuple[str, Any], ...] = ()  # extra constructor arguments
    img2img_only: bool = False
    hidden: bool = False  # API/infotext only (kept in the list so positions stay fixed)


def _w(kind, label, help="", img2img_only=False, hidden=False, **args) -> Widget:
    return Widget(kind, label, help, tuple(args.items()), img2img_only, hidden)


WIDGETS: dict[str, Widget] = {
    "model": _w(
        "Dropdown", "Motion module", "Files in the motion-module folder that fit the loaded checkpoint"
    ),
    "enable": _w("Checkbox", "Enable AnimateDiff"),
    "video_length": _w("Number", "Number of frames", "0 = the context batch size", precision=0, minimum=0),
    "fps": _w("Number", "FPS", "Playback speed of the video", precision=0, minimum=1),
    "loop_number": _w(
        "Number", "Display loop number", "GIF/WebP repeats; 0 = forever", precision=0, minimum=0
    ),
    "closed_loop": _w(
        "Radio",
        "Closed loop",
        "N: no loop · R-P/R+P: windows wrap (R+P also loops the prompts) · A: aggressive",
        choices=[c.value for c in ClosedLoop],
    ),
    "batch_size": _w(
        "Slider",
        "Context batch size",
        "Frames the motion module sees at once (16 for most modules)",
        minimum=1,
        maximum=64,
        step=1,
    ),
    "stride": _w(
        "Number",
        "Stride",
        "Extra dilated windows 1, 2, 4, …; only when frames > context",
        precision=0,
        minimum=1,
    ),
    "overlap": _w(
        "Number",
        "Overlap",
        "Frames shared by neighbouring windows; -1 = context ÷ 4",
        precision=0,
        minimum=-1,
    ),
    "format": _w("CheckboxGroup", "Save format", choices=list(SAVE_FORMATS)),
    "interp": _w(
        "Radio",
        "Frame interpolation",
        "FILM if Deforum is installed, else optical flow",
        choices=[i.value for i in Interp],
    ),
    "interp_x": _w("Number", "Interp X", "Each frame becomes X frames", precision=0, minimum=1),
    "video_source": _w(
        "Video",
        "Video source",
        "ControlNet units without an input of their own take its frames (one per frame). A unit's own "
        "image or folder comes first, then the img2img batch folder, then Video path, then this video",
    ),
    "video_path": _w(
        "Textbox",
        "Video path",
        "Folder of frames for ControlNet; used instead of Video source when both are given",
    ),
    "mask_path": _w("Textbox", "Mask path", "Folder of masks (one, or one per frame) for ControlNet units"),
    "freeinit_enable": _w(
        "Checkbox", "Enable FreeInit", "Samples the video several times; steadier, and that many times slower"
    ),
    "freeinit_filter": _w("Dropdown", "Filter type", choices=[f.value for f in FreeInitFilter]),
    "freeinit_ds": _w("Slider", "d_s", "Spatial stop frequency", minimum=0.0, maximum=1.0, step=0.0625),
    "freeinit_dt": _w("Slider", "d_t", "Temporal stop frequency", minimum=0.0, maximum=1.0, step=0.0625),
    "freeinit_iters": _w("Slider", "FreeInit iterations", minimum=2, maximum=5, step=1),
    "latent_power": _w(
        "Slider",
        "Latent power",
        "How fast the init image fades over the frames",
        True,
        minimum=0.1,
        maximum=10,
        step=0.1,
    ),
    "latent_scale": _w(
        "Slider",
        "Latent scale",
        "Higher keeps the init image for more frames",
        True,
        minimum=1,
        maximum=128,
        step=1,
    ),
    "last_frame": _w("Image", "Optional last frame", img2img_only=True, type="pil"),
    "latent_power_last": _w(
        "Slider", "Latent power (last frame)", img2img_only=True, minimum=0.1, maximum=10, step=0.1
    ),
    "latent_scale_last": _w(
        "Slider", "Latent scale (last frame)", img2img_only=True, minimum=1, maximum=128, step=1
    ),
    "request_id": _w("Textbox", "Request id", hidden=True),
    "noise_type": _w(
        "Radio",
        "Noise",
        "FreeNoise: windows past the first start from reshuffled noise of the first, for steadier long videos",
        choices=[t.value for t in NoiseType],
    ),
    "motion_scale": _w(
        "Slider",
        "Motion scale",
        "How much the motion module acts; 0 = still frames",
        minimum=0,
        maximum=2,
        step=0.05,
    ),
    "motion_mask": _w(
        "Image", "Motion mask", "White moves, black keeps still (down to the minimum)", type="pil"
    ),
    "window_mode": _w(
        "Radio",
        "Window mode",
        "motion_module: only the motion module's attention runs in windows (faster); unet: the whole UNet "
        "per window (the old extension's way)",
        choices=[m.value for m in WindowMode],
    ),
    "travel_curve": _w(
        "Radio",
        "Travel curve",
        "How the prompt moves between two keyframes: linear, sine (there and back), a curve, or the audio's energy",
        choices=[c.value for c in TravelCurve],
    ),
    "travel_curve_args": _w(
        "Textbox", "Curve", "sine: frequencies (1, 3) · curve: 0:(0.0), 8:(1.0) · audio: mean, max or median"
    ),
    "color_match": _w("Checkbox", "Match colours to the first frame", "img2img: to the init image"),
    "audio": _w(
        "Audio", "Soundtrack", "Muxed into MP4 and WebM, cut or padded to the video", type="filepath"
    ),
    "audio_onsets": _w(
        "Radio",
        "Onsets in the infotext",
        "Frame numbers of the audio's beats, to put prompt keyframes on",
        choices=[o.value for o in Onsets],
    ),
    "zoom": _w("Textbox", "Zoom per frame", "1.0 = still; 0:(1.0), 15:(1.05)", img2img_only=True),
    "angle": _w("Textbox", "Angle per frame", "degrees, counter-clockwise", img2img_only=True),
    "translate_x": _w("Textbox", "Translate X per frame", "pixels, right", img2img_only=True),
    "translate_y": _w("Textbox", "Translate Y per frame", "pixels, down", img2img_only=True),
    "camera_border": _w("Radio", "Camera border", img2img_only=True, choices=[b.value for b in Border]),
    "motion_mask_min": _w(
        "Slider",
        "Motion in black areas",
        "Motion scale left where the mask is black",
        minimum=0,
        maximum=1,
        step=0.05,
    ),
}
# Visual rows; keys not listed here are built hidden after them.
ROWS: tuple[tuple[str, ...], ...] = (
    ("enable",),
    ("video_length", "fps", "loop_number"),
    ("batch_size", "stride", "overlap"),
    ("closed_loop", "window_mode"),
    ("format",),
    ("interp", "interp_x"),
    ("video_source", "video_path", "mask_path"),
    ("noise_type", "motion_scale"),
    ("motion_mask", "motion_mask_min"),
    ("freeinit_enable", "freeinit_filter", "freeinit_iters"),
    ("freeinit_ds", "freeinit_dt"),
    ("travel_curve", "travel_curve_args"),
    ("color_match",),
    ("audio", "audio_onsets"),
    ("zoom", "angle", "translate_x", "translate_y"),
    ("camera_border",),
    ("latent_power", "latent_scale"),
    ("last_frame",),
    ("latent_power_last", "latent_scale_last"),
)


def video_summary(
    path: Any, probe: Callable[[str], tuple[int, float]] = probe_video
) -> tuple[int | None, str]:
    """(fps to put in the FPS field, the line shown under the upload) for an uploaded video.

    The count and fps come from decoding the whole video the way the job will, so they are
    the numbers the job uses (Number of frames 0 = all of them)."""
    if isinstance(path, dict):
        path = path.get("name") or path.get("path")
    if not path:
        return None, ""
    try:
        count, fps = probe(str(path))
    except ValueError as error:
        return None, f"⚠️ {error}"
    return max(1, round(fps)), f"Video: {count} frames at {fps:.3g} fps (Number of frames 0 uses all of them)"


def beat_summary(audio: Any, fps: Any, kind: Any) -> str:
    """The frame numbers of the soundtrack's onsets at this FPS, for prompt keyframes on the beat
    (percussive unless another kind is chosen)."""
    from motion_module.audio_analysis import onset_frames
    from motion_module.audio_decode import load_audio

    if isinstance(audio, dict):
        audio = audio.get("name") or audio.get("path")
    if not audio:
        return "Upload a soundtrack first"
    kind = kind if kind in ("percussive", "harmonic", "both") else "percussive"
    try:
        frames = onset_frames(load_audio(str(audio)), float(fps or 8), kind)
    except ValueError as error:
        return f"⚠️ {error}"
    return f"{kind.capitalize()} onsets at frames: " + (", ".join(str(f) for f in frames) or "none")


def uploaded_video(path: Any, fps: Any, gr: Any) -> tuple[Any, Any]:
    new_fps, text = video_summary(path)
    return gr.update(value=new_fps if new_fps is not None else fps), gr.update(value=text)


@dataclass
class Panel:
    components: list[Any]  # in FIELD_KEYS order: what ui() returns
    by_key: dict[str, Any]
    infotext_fields: list[tuple[Any, str]]
    paste_field_names: list[str]


def build(
    gr: Any,
    *,
    is_img2img: bool,
    defaults: AnimateDiffParams,
    model_choices: Callable[[], list[str]],
    elem_id: Callable[[str], str],
    tool_button: Any = None,
) -> Panel:
    """Create the accordion inside the current gradio Blocks context."""
    values = {k: ui_value(v) for k, v in flatten(defaults).items()}
    choices = model_choices()
    if values["model"] not in choices:
        values["model"] = choices[0] if choices else values["model"]
    comps: dict[str, Any] = {}

    def make(key: str) -> Any:
        widget = WIDGETS[key]
        kwargs: dict[str, Any] = dict(widget.args)
        kwargs.update(label=widget.label, elem_id=elem_id(key))
        kwargs["visible"] = not widget.hidden and (is_img2img or not widget.img2img_only)
        media = widget.kind in ("Video", "Image", "Audio")
        if widget.help and not media:
            kwargs["info"] = widget.help
        if not media:
            kwargs["value"] = values[key]
        if widget.kind == "Video":
            kwargs["source"] = "upload"
        comps[key] = getattr(gr, widget.kind)(**kwargs)
        return comps[key]

    button = tool_button or (lambda **kw: gr.Button(size="sm", **kw))
    with gr.Accordion("AnimateDiff", open=False, elem_id=elem_id("accordion")):
        with gr.Row():
            comps["model"] = gr.Dropdown(
                label=WIDGETS["model"].label,
                choices=choices,
                value=values["model"],
                allow_custom_value=True,
                elem_id=elem_id("model"),
            )
            refresh = button(value="\U0001f504", elem_id=elem_id("refresh_models"))
        for row in ROWS:
            with gr.Row():
                for key in row:
                    make(key)
            if row[0] == "video_source":
                video_info = gr.Markdown("", elem_id=elem_id("video_info"))
            if row[0] == "audio":
                with gr.Row():
                    beats = button(value="\U0001f941", elem_id=elem_id("beats"))  # drum: list the onsets
                    beat_info = gr.Markdown("", elem_id=elem_id("beat_info"))
        for key in FIELD_KEYS:
            if key not in comps:
                make(key)
    refresh.click(fn=lambda: gr.Dropdown.update(choices=model_choices()), inputs=[], outputs=[comps["model"]])
    beats.click(
        fn=lambda audio, fps, kind: beat_summary(audio, fps, kind),
        inputs=[comps["audio"], comps["fps"], comps["audio_onsets"]],
        outputs=[beat_info],
    )
    comps["video_source"].change(
        fn=lambda video, fps: uploaded_video(video, fps, gr),
        inputs=[comps["video_source"], comps["fps"]],
        outputs=[comps["fps"], video_info],
    )

    components = [comps[key] for key in FIELD_KEYS]
    pastable = [k for k in FIELD_KEYS if k in INFOTEXT_FIELDS and k != "request_id"]
    if not is_img2img:
        pastable = [k for k in pastable if not WIDGETS[k].img2img_only]
    return Panel(
        components=components,
        by_key=comps,
        infotext_fields=[(comps[k], PasteKey(k)) for k in pastable],
        paste_field_names=[PasteKey(k) for k in pastable],
    )
