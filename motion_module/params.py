"""Every user-facing knob as frozen data, and the one parser that builds it.

The adapter parses the UI, the API, pasted infotext and XYZ axes into these objects once, through
``parse_params``; the engine only ever reads them. Derived values are computed, never written back
(use ``dataclasses.replace``). Enum values and field keys are the strings the predecessor's API and
infotext use, so old payloads keep working. Imports nothing from the WebUI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .coercers import Rejected, as_bool, enum_list, enum_of, float_in, int_in, text_up_to


class ClosedLoop(str, Enum):
    """How the context windows (and prompt travel) treat the end of the video."""

    N = "N"  # no loop: windows never wrap across the end
    R_MINUS_P = "R-P"  # windows wrap; prompts do not travel back to the first keyframe
    R_PLUS_P = "R+P"  # windows wrap; prompts travel back to the first keyframe
    A = "A"  # wrap aggressively (one more wrapping window); ping-pong when frames <= context


class Fusion(str, Enum):
    """How predictions of overlapping windows are combined per frame."""

    PYRAMID = "pyramid"
    FLAT = "flat"


class WindowMode(str, Enum):
    """What runs in windows: the whole UNet, or only the motion module's temporal attention."""

    UNET = "unet"
    MOTION_MODULE = "motion_module"


class TravelInterpolation(str, Enum):
    SLERP = "slerp"
    LINEAR = "linear"


class ExportFormat(str, Enum):
    GIF = "GIF"
    MP4 = "MP4"
    WEBP = "WEBP"
    WEBM = "WEBM"
    PNG = "PNG"
    TXT = "TXT"
    FRAME = "Frame"  # API only: return every frame as well as the videos


class Interp(str, Enum):
    OFF = "Off"
    FILM = "FILM"  # the predecessor's name for "interpolate"; FILM if Deforum is there, else optical flow


class NoiseType(str, Enum):
    """How the starting noise of frames past the first context is made (``noise_type``)."""

    DEFAULT = "default"  # independent noise per frame, untouched
    FREENOISE = "freenoise"  # each block a random permutation of the block one context earlier
    REPEATED_CONTEXT = "repeated_context"  # each block an exact copy of the first block


class TravelCurve(str, Enum):
    """How the prompt travels between two keyframes."""

    LINEAR = "linear"
    SINE = "sine"  # normalised sum of sin²(π·f·t) over the frequencies in travel_curve_args
    CURVE = "curve"  # a keyframe string over the video's frames, values 0-1
    AUDIO = "audio"  # as fast as the audio's energy


class Onsets(str, Enum):
    """Which audio onsets the response lists as frame numbers (for keyframes on the beat)."""

    OFF = "off"
    PERCUSSIVE = "percussive"
    HARMONIC = "harmonic"
    BOTH = "both"


class Border(str, Enum):
    REPLICATE = "replicate"
    REFLECT = "reflect"
    ZERO = "zero"


class FreeInitFilter(str, Enum):
    BUTTERWORTH = "butterworth"
    GAUSSIAN = "gaussian"
    BOX = "box"
    IDEAL = "ideal"


@dataclass(frozen=True)
class WindowParams:
    """Sliding-window ("infinite context") sampling."""

    context: int = 16  # frames the motion module sees at once
    stride: int = 1  # extra dilated windows with spacing 1, 2, 4, ... (only when frames > context)
    overlap: int = -1  # -1 means context // 4
    closed_loop: ClosedLoop = ClosedLoop.R_MINUS_P
    fusion: Fusion = Fusion.PYRAMID
    frame_budget: int = 32  # frames per UNet call when batching windows; 0 = one window per call
    mode: WindowMode = WindowMode.UNET

    @property
    def effective_overlap(self) -> int:
        return self.context // 4 if self.overlap == -1 else self.overlap


@dataclass(frozen=True)
class ExportParams:
    """What gets written after sampling, and how."""

    formats: tuple[ExportFormat, ...] = (ExportFormat.GIF, ExportFormat.PNG)
    fps: int = 8
    loop_number: int = 0  # GIF/WebP loop count, 0 = forever
    interp: Interp = Interp.OFF
    interp_x: int = 10
    gif_palette: bool = False
    gifsicle: bool = False
    mp4_crf: int = 23
    mp4_preset: str = ""
    mp4_tune: str = ""
    webp_quality: int = 80
    webp_lossless: bool = False


@dataclass(frozen=True)
class Img2VidParams:
    """First/last-frame latent blending on the img2img tab (curves in ``latents.decay_curve``)."""

    latent_power: float = 1.0
    latent_scale: float = 32.0
    latent_power_last: float = 1.0
    latent_scale_last: float = 32.0


@dataclass(frozen=True)
class FreeInitParams:
    """FreeInit: sample ``iters`` times, each later pass starting from the low frequencies of the
    last result (re-noised) and the high frequencies of noise; ``ds``/``dt`` are the spatial and
    temporal stop frequencies of the low-pass ``filter``."""

    enable: bool = False
    filter: FreeInitFilter = FreeInitFilter.BUTTERWORTH
    ds: float = 0.25
    dt: float = 0.25
    iters: int = 3
    coarse_to_fine: bool = False  # a setting: fewer steps in the early iterations


@dataclass(frozen=True)
class MotionParams:
    """How strongly the motion module acts: its residual times ``scale``; with a ``mask`` (an
    image: white = full scale, black = ``mask_min`` × scale) per pixel."""

    scale: float = 1.0
    mask: Any = dataclasses.field(default=None, compare=False)  # image or base64, like last_frame
    mask_min: float = 0.0


@dataclass(frozen=True)
class ExtrasParams:
    """Travel curves, colour matching, the soundtrack and 2D camera moves for img2vid. The
    keyframe strings (``zoom`` ...) are Deforum's ``frame:(value)`` lists or plain numbers."""

    travel_curve: TravelCurve = TravelCurve.LINEAR
    travel_curve_args: str = ""
    color_match: bool = False
    audio: str = ""  # a path or base64 audio (wav, mp3, flac, ogg, m4a)
    audio_onsets: Onsets = Onsets.OFF
    zoom: str = "1"
    angle: str = "0"
    translate_x: str = "0"
    translate_y: str = "0"
    camera_border: Border = Border.REPLICATE

    @property
    def camera(self) -> bool:
        return (self.zoom, self.angle, self.translate_x, self.translate_y) != ("1", "0", "0", "0")


DEFAULT_MODEL = "mm_sd15_v3.safetensors"


@dataclass(frozen=True)
class AnimateDiffParams:
    """One generation's AnimateDiff request, validated. ``frames`` is what actually gets sampled."""

    enable: bool = False
    model: str = DEFAULT_MODEL  # file name relative to the motion-module folder
    video_length: int = 0  # 0 means "as many frames as the context"
    window: WindowParams = WindowParams()
    export: ExportParams = ExportParams()
    img2vid: Img2VidParams = Img2VidParams()
    # An image (PIL, numpy, gradio dict) or a base64 string; not compared (arrays have no plain ==).
    last_frame: Any = dataclasses.field(default=None, compare=False)
    video_source: str = ""  # path of an uploaded video (ControlNet broadcast input)
    video_path: str = ""  # folder of frames; wins over video_source
    mask_path: str = ""
    freeinit: FreeInitParams = FreeInitParams()
    noise_type: NoiseType = NoiseType.DEFAULT
    motion: MotionParams = MotionParams()
    extras: ExtrasParams = ExtrasParams()
    request_id: str = ""
    travel_interpolation: TravelInterpolation = TravelInterpolation.SLERP
    # The keys the request set (the UI sets all); a video's own fps is used when "fps" is not one.
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @property
    def frames(self) -> int:
        return self.video_length or self.window.context


# ---------------------------------------------------------------------------------------------
# The field table: one row per argument, in the order of the UI components and positional lists.


@dataclass(frozen=True)
class Field:
    """One user-facing argument: its API/infotext key, how a raw value becomes a typed one."""

    key: str
    coerce: Callable[[Any], Any]  # raw value -> typed value; raises Rejected
    allowed: str  # what is allowed, for error messages and tooltips
    get: Callable[[AnimateDiffParams], Any]  # typed value out of a params object
    img2img_only: bool = False


def _interp(value: Any) -> Interp:
    if isinstance(value, bool):  # the predecessor's XYZ axis sent True/False
        return Interp.FILM if value else Interp.OFF
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return Interp.FILM if value.strip().lower() == "true" else Interp.OFF
    return enum_of(Interp)(value)


MAX_VIDEO_DATA = 512 * 1024 * 1024  # base64 text of a video sent through the API


def _video(value: Any) -> str:
    if isinstance(value, dict):  # some gradio versions hand over {"name": path, ...}
        value = value.get("name") or value.get("path")
    return text_up_to(MAX_VIDEO_DATA)(value)


def _image(value: Any) -> Any:
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if (
        isinstance(value, str | dict)
        or hasattr(value, "shape")
        or hasattr(value, "size")
        and hasattr(value, "mode")
    ):
        return value
    raise Rejected


def _keyframes(value: Any) -> str:
    """A keyframe string or a plain number, as text (checked against the frames in ``_build``)."""
    if isinstance(value, bool):
        raise Rejected
    if isinstance(value, int | float):
        return _text_of(float(value))
    return text_up_to(4096)(value) or "0"


def _model(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejected
    return value.strip()


def _f(key, coerce, allowed, get, img2img_only=False) -> Field:
    return Field(key, coerce, allowed, get, img2img_only)


FIELDS: tuple[Field, ...] = (
    _f("model", _model, "a motion-module file name from the model folder", lambda p: p.model),
    _f("enable", as_bool, "true or false", lambda p: p.enable),
    _f(
        "video_length",
        int_in(0, 4096),
        "a whole number 0..4096 (0 = context size)",
        lambda p: p.video_length,
    ),
    _f("fps", int_in(1, 240), "a whole number 1..240", lambda p: p.export.fps),
    _f(
        "loop_number",
        int_in(0, 10000),
        "a whole number ≥ 0 (0 = loop forever)",
        lambda p: p.export.loop_number,
    ),
    _f("closed_loop", enum_of(ClosedLoop), "one of N, R-P, R+P, A", lambda p: p.window.closed_loop),
    _f("batch_size", int_in(1, 64), "a whole number 1..64 (the context size)", lambda p: p.window.context),
    _f("stride", int_in(1, 16), "a whole number 1..16", lambda p: p.window.stride),
    _f(
        "overlap",
        int_in(-1, 63),
        "-1 (= context // 4) or a whole number below the context size",
        lambda p: p.window.overlap,
    ),
    _f(
        "format",
        enum_list(ExportFormat),
        "one or more of GIF, MP4, WEBP, WEBM, PNG, TXT, Frame",
        lambda p: p.export.formats,
    ),
    _f("interp", _interp, "Off or FILM", lambda p: p.export.interp),
    _f("interp_x", int_in(1, 100), "a whole number 1..100", lambda p: p.export.interp_x),
    _f(
        "video_source",
        _video,
        "a video file path, base64 video data (MP4, WebM, MOV, GIF, WebP) or nothing",
        lambda p: p.video_source,
    ),
    _f("video_path", text_up_to(4096), "a folder path or nothing", lambda p: p.video_path),
    _f("mask_path", text_up_to(4096), "a folder path or nothing", lambda p: p.mask_path),
    _f("freeinit_enable", as_bool, "true or false", lambda p: p.freeinit.enable),
    _f(
        "freeinit_filter",
        enum_of(FreeInitFilter),
        "butterworth, gaussian, box or ideal",
        lambda p: p.freeinit.filter,
    ),
    _f("freeinit_ds", float_in(0.0, 1.0), "a number 0..1", lambda p: p.freeinit.ds),
    _f("freeinit_dt", float_in(0.0, 1.0), "a number 0..1", lambda p: p.freeinit.dt),
    _f("freeinit_iters", int_in(2, 5), "a whole number 2..5", lambda p: p.freeinit.iters),
    _f("latent_power", float_in(0.1, 10.0), "a number 0.1..10", lambda p: p.img2vid.latent_power, True),
    _f("latent_scale", float_in(1.0, 128.0), "a number 1..128", lambda p: p.img2vid.latent_scale, True),
    _f("last_frame", _image, "an image, a base64-encoded image, or nothing", lambda p: p.last_frame, True),
    _f(
        "latent_power_last",
        float_in(0.1, 10.0),
        "a number 0.1..10",
        lambda p: p.img2vid.latent_power_last,
        True,
    ),
    _f(
        "latent_scale_last",
        float_in(1.0, 128.0),
        "a number 1..128",
        lambda p: p.img2vid.latent_scale_last,
        True,
    ),
    _f("request_id", text_up_to(256), "text (at most 256 characters)", lambda p: p.request_id),
    # Fields the predecessor did not have come last, so its positional lists keep their meaning.
    _f(
        "noise_type",
        enum_of(NoiseType),
        "one of default, FreeNoise, repeated_context",
        lambda p: p.noise_type,
    ),
    _f("motion_scale", float_in(0.0, 2.0), "a number 0..2", lambda p: p.motion.scale),
    _f("motion_mask", _image, "an image, a base64-encoded image, or nothing", lambda p: p.motion.mask),
    _f("motion_mask_min", float_in(0.0, 1.0), "a number 0..1", lambda p: p.motion.mask_min),
    _f(
        "window_mode",
        enum_of(WindowMode),
        "unet or motion_module",
        lambda p: p.window.mode,
    ),
    _f("travel_curve", enum_of(TravelCurve), "linear, sine, curve or audio", lambda p: p.extras.travel_curve),
    _f(
        "travel_curve_args",
        text_up_to(4096),
        "sine frequencies (1, 2) or a curve such as 0:(0), 8:(1)",
        lambda p: p.extras.travel_curve_args,
    ),
    _f("color_match", as_bool, "true or false", lambda p: p.extras.color_match),
    _f("audio", _video, "an audio file path, base64 audio, or nothing", lambda p: p.extras.audio),
    _f(
        "audio_onsets",
        enum_of(Onsets),
        "off, percussive, harmonic or both",
        lambda p: p.extras.audio_onsets,
    ),
    _f("zoom", _keyframes, "a number or keyframes such as 0:(1.0), 15:(1.05)", lambda p: p.extras.zoom, True),
    _f("angle", _keyframes, "a number or keyframes such as 0:(0), 15:(2)", lambda p: p.extras.angle, True),
    _f(
        "translate_x",
        _keyframes,
        "a number or keyframes (pixels per frame)",
        lambda p: p.extras.translate_x,
        True,
    ),
    _f(
        "translate_y",
        _keyframes,
        "a number or keyframes (pixels per frame)",
        lambda p: p.extras.translate_y,
        True,
    ),
    _f(
        "camera_border", enum_of(Border), "replicate, reflect or zero", lambda p: p.extras.camera_border, True
    ),
)
FIELD_KEYS: tuple[str, ...] = tuple(f.key for f in FIELDS)
_BY_KEY = {f.key: f for f in FIELDS}

# Keys accepted in an API dict besides the UI fields: our own names and one setting.
EXTRA_FIELDS: dict[str, Field] = {
    "travel_interpolation": _f(
        "travel_interpolation",
        enum_of(TravelInterpolation),
        "slerp or linear",
        lambda p: p.travel_interpolation,
    ),
}
ALIASES = {"frames": "video_length", "context": "batch_size", "formats": "format"}
# Written into infotext for the record, ignored when read back.
INFOTEXT_ONLY_KEYS = ("mm_hash", "version")


def field(key: str) -> Field:
    return _BY_KEY[key] if key in _BY_KEY else EXTRA_FIELDS[key]


def coerce_field(key: str, value: Any) -> Any:
    """One raw value -> its typed value, or ValueError naming the field, the value and what is allowed."""
    spec = field(ALIASES.get(key, key))
    try:
        return spec.coerce(value)
    except Rejected:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ValueError(
            f"AnimateDiff: {spec.key} = {shown} is not allowed; expected {spec.allowed}"
        ) from None


def flatten(params: AnimateDiffParams) -> dict[str, Any]:
    """Params -> {key: typed value} for every field (what the UI shows and the API would send)."""
    return {f.key: f.get(params) for f in FIELDS} | {k: f.get(params) for k, f in EXTRA_FIELDS.items()}


class ParamsError(ValueError):
    """A value the parser refused. ``enable`` says whether the request asked for AnimateDiff
    (a value that is not a boolean counts as asking), so a disabled panel holding a bad value
    never stops a plain generation while a bad API request always reports its error."""

    def __init__(self, message: str, *, enable: bool):
        super().__init__(message)
        self.enable = enable


def parse_params(
    source: Mapping[str, Any] | Sequence[Any] | None = None,
    *,
    base: AnimateDiffParams | None = None,
    overrides: Mapping[str, Any] | None = None,
    ignore_unknown: bool = False,
) -> AnimateDiffParams:
    """The one parser. ``source`` is an API/infotext/XYZ dict keyed like the predecessor, or a
    positional list in ``FIELDS`` order (the UI's values, or the API's list form); missing entries
    keep ``base`` (defaults plus settings). ``overrides`` (XYZ axes) win over ``source``.
    Everything that can be checked without the motion module is checked here, once; raises
    ``ParamsError`` naming the field, the value and what is allowed.
    """
    base = base or AnimateDiffParams()
    enable = _requested_enable(source, overrides, base)
    try:
        raw = _raw(source, overrides, ignore_unknown)
        values = flatten(base) | {key: coerce_field(key, value) for key, value in raw.items()}
        return dataclasses.replace(_build(values, base), given=frozenset(raw))
    except ValueError as error:
        raise ParamsError(str(error), enable=enable) from None


def _raw(
    source: Mapping[str, Any] | Sequence[Any] | None,
    overrides: Mapping[str, Any] | None,
    ignore_unknown: bool,
) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if source is None:
        pass
    elif isinstance(source, Mapping):
        raw.update(_keyed(source, ignore_unknown))
    elif isinstance(source, Sequence) and not isinstance(source, str | bytes):
        if len(source) > len(FIELDS):
            raise ValueError(
                f"AnimateDiff: {len(source)} positional arguments given, at most {len(FIELDS)} allowed "
                f"(in this order: {', '.join(FIELD_KEYS)}); or send one dict keyed by these names"
            )
        raw.update(zip(FIELD_KEYS, source, strict=False))
    else:
        raise ValueError(
            f"AnimateDiff: arguments must be a dict keyed by {', '.join(FIELD_KEYS)} or a list in that "
            f"order, not {type(source).__name__}"
        )
    raw.update(_keyed(overrides or {}, ignore_unknown=False))
    return raw


def _requested_enable(
    source: Mapping[str, Any] | Sequence[Any] | None,
    overrides: Mapping[str, Any] | None,
    base: AnimateDiffParams,
) -> bool:
    raw: Any = base.enable
    position = FIELD_KEYS.index("enable")
    if overrides and "enable" in overrides:
        raw = overrides["enable"]
    elif isinstance(source, Mapping):
        raw = source.get("enable", raw)
    elif isinstance(source, Sequence) and not isinstance(source, str | bytes) and len(source) > position:
        raw = source[position]
    try:
        return bool(as_bool(raw))
    except Rejected:
        return True


def _keyed(source: Mapping[str, Any], ignore_unknown: bool) -> dict[str, Any]:
    keyed: dict[str, Any] = {}
    for key, value in source.items():
        key = ALIASES.get(key, key)
        if key in _BY_KEY or key in EXTRA_FIELDS:
            keyed[key] = value
        elif key in INFOTEXT_ONLY_KEYS or ignore_unknown:
            continue
        else:
            allowed = ", ".join((*FIELD_KEYS, *EXTRA_FIELDS, *ALIASES))
            raise ValueError(f"AnimateDiff: unknown argument {key!r}; allowed keys are {allowed}")
    return keyed


def _build(v: dict[str, Any], base: AnimateDiffParams) -> AnimateDiffParams:
    if v["overlap"] >= v["batch_size"]:
        raise ValueError(
            f"AnimateDiff: overlap = {v['overlap']} is not allowed with context batch size "
            f"{v['batch_size']}; expected -1 (= context // 4) or a whole number below {v['batch_size']}"
        )
    if base.window.frame_budget < 0:  # a setting, not a request field
        raise ValueError(
            f"AnimateDiff: frame budget = {base.window.frame_budget} is not allowed; expected 0 (one "
            "window per UNet call) or a number of frames per call >= 1 (Settings → AnimateDiff)"
        )
    r = dataclasses.replace
    return r(
        base,
        enable=v["enable"],
        model=v["model"],
        video_length=v["video_length"],
        window=r(
            base.window,
            context=v["batch_size"],
            stride=v["stride"],
            overlap=v["overlap"],
            closed_loop=v["closed_loop"],
            mode=v["window_mode"],
        ),
        export=r(
            base.export,
            formats=v["format"],
            fps=v["fps"],
            loop_number=v["loop_number"],
            interp=v["interp"],
            interp_x=v["interp_x"],
        ),
        img2vid=Img2VidParams(
            v["latent_power"], v["latent_scale"], v["latent_power_last"], v["latent_scale_last"]
        ),
        last_frame=v["last_frame"],
        video_source=v["video_source"],
        video_path=v["video_path"],
        mask_path=v["mask_path"],
        freeinit=r(
            base.freeinit,
            enable=v["freeinit_enable"],
            filter=v["freeinit_filter"],
            ds=v["freeinit_ds"],
            dt=v["freeinit_dt"],
            iters=v["freeinit_iters"],
        ),
        noise_type=v["noise_type"],
        motion=MotionParams(v["motion_scale"], v["motion_mask"], v["motion_mask_min"]),
        extras=_extras(v),
        request_id=v["request_id"],
        travel_interpolation=v["travel_interpolation"],
    )


def _extras(v: dict[str, Any]) -> ExtrasParams:
    """The extras, with the curve and camera strings checked against the video's frames (a bad
    string is refused with the position of the error)."""
    from .camera_moves import camera_schedule
    from .travel_curves import travel_curve

    extras = ExtrasParams(
        v["travel_curve"],
        v["travel_curve_args"],
        v["color_match"],
        v["audio"],
        v["audio_onsets"],
        v["zoom"],
        v["angle"],
        v["translate_x"],
        v["translate_y"],
        v["camera_border"],
    )
    frames = v["video_length"] or v["batch_size"]
    try:
        if extras.travel_curve is not TravelCurve.AUDIO:
            travel_curve(extras.travel_curve.value, extras.travel_curve_args, frames)
        elif not extras.audio:
            raise ValueError("travel_curve = 'audio' needs audio: give an audio file or base64 audio")
        camera_schedule(frames, extras.zoom, extras.angle, extras.translate_x, extras.translate_y)
    except ValueError as error:
        text = str(error)
        raise ValueError(text if text.startswith("AnimateDiff") else f"AnimateDiff: {text}") from None
    if extras.audio_onsets is not Onsets.OFF and not extras.audio:
        raise ValueError(
            f"AnimateDiff: audio_onsets = {extras.audio_onsets.value!r} needs audio; give an audio file or "
            "base64 audio, or set audio_onsets to off"
        )
    return extras


def check_fits_module(params: AnimateDiffParams, pe_length: int, label: str) -> None:
    """The one check that needs the loaded motion module: a window cannot hold more frames than
    the module has position slots (v1: 24; v2/v3/SDXL beta: 32; AnimateLCM: 64)."""
    context = params.window.context
    if context > pe_length:
        raise ParamsError(
            f"AnimateDiff: batch_size = {context} (the context) is not allowed with {label}: this motion "
            f"module has only {pe_length} position slots; expected at most {pe_length}, or a module with "
            "more slots (v2/v3/SDXL beta: 32, AnimateLCM: 64)",
            enable=True,
        )


# ---------------------------------------------------------------------------------------------
# Infotext: writer and reader side by side. The WebUI stores the value under the key "AnimateDiff"
# (quoted, since it holds ", " and ": "); the predecessor's values read the same way.

INFOTEXT_KEY = "AnimateDiff"
_INFOTEXT_FIELDS = (
    "model",
    "video_length",
    "fps",
    "loop_number",
    "closed_loop",
    "batch_size",
    "stride",
    "overlap",
    "interp",
    "interp_x",
    "freeinit_enable",
)
_IMG2VID_FIELDS = ("latent_power", "latent_scale", "latent_power_last", "latent_scale_last")
_FREEINIT_FIELDS = ("freeinit_filter", "freeinit_ds", "freeinit_dt", "freeinit_iters")  # when it is on
_MOTION_FIELDS = (  # when not at their defaults
    "noise_type",
    "motion_scale",
    "motion_mask_min",
    "travel_curve",
    "travel_curve_args",
    "color_match",
    "zoom",
    "angle",
    "translate_x",
    "translate_y",
    "camera_border",
)
# Always written; an infotext without it was made with full-UNet windows (the predecessor's only mode).
_MODE_FIELDS = ("window_mode",)
# Every field an infotext can carry back into the panel.
INFOTEXT_FIELDS = (
    *_INFOTEXT_FIELDS,
    "request_id",
    *_IMG2VID_FIELDS,
    *_FREEINIT_FIELDS,
    *_MOTION_FIELDS,
    *_MODE_FIELDS,
    "enable",
    "format",
)


def _text_of(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return "/".join(_text_of(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def infotext_value(
    params: AnimateDiffParams, *, is_img2img: bool = False, mm_hash: str = "", version: str = ""
) -> str:
    """The value written under ``AnimateDiff``: the predecessor's fields, then enable and format."""
    flat = flatten(params)
    items = [(key, flat[key]) for key in _INFOTEXT_FIELDS]
    if params.request_id:
        items.append(("request_id", params.request_id))
    if mm_hash:
        items.append(("mm_hash", mm_hash))
    if is_img2img:
        items += [(key, flat[key]) for key in _IMG2VID_FIELDS]
    if params.freeinit.enable:
        items += [(key, flat[key]) for key in _FREEINIT_FIELDS]
    defaults = flatten(AnimateDiffParams())
    items += [(key, flat[key]) for key in _MOTION_FIELDS if flat[key] != defaults[key]]
    items += [(key, flat[key]) for key in _MODE_FIELDS]
    if version:
        items.append(("version", version))
    items += [("enable", params.enable), ("format", params.export.formats)]
    return ", ".join(f"{key}: {_text_of(value)}" for key, value in items)


def conditional_defaults() -> dict[str, str]:
    """Infotext text of the fields written only when they matter (FreeInit's settings while it is
    on, motion fields away from their defaults): pasting an infotext without them means these."""
    flat = flatten(AnimateDiffParams())  # WindowParams' own default mode is the full-UNet one
    return {key: _text_of(flat[key]) for key in (*_FREEINIT_FIELDS, *_MOTION_FIELDS, *_MODE_FIELDS)}


def read_infotext(value: str) -> dict[str, str]:
    """``"model: x, video_length: 16, ..."`` -> {"model": "x", "video_length": "16", ...}."""
    fields: dict[str, str] = {}
    for part in value.split(", "):
        key, separator, text = part.partition(": ")
        if separator:
            fields[key.strip()] = text.strip()
        elif fields:  # a comma inside the previous value (e.g. a model file name)
            last = next(reversed(fields))
            fields[last] += ", " + part
    return fields


def params_from_infotext(value: str, *, base: AnimateDiffParams | None = None) -> AnimateDiffParams:
    """Pasted infotext turns AnimateDiff on: the predecessor never wrote ``enable``."""
    fields = {"enable": "True"} | read_infotext(value)
    return parse_params(fields, base=base, ignore_unknown=True)
