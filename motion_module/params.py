"""Every user-facing knob as frozen data: enums with stable machine values, and parameter groups.

The adapter parses the UI, the API, pasted infotext and XYZ axes into these objects once; the
engine only ever reads them. Derived values are computed, never written back (use
``dataclasses.replace``). Enum values are the strings the predecessor's API and infotext use, so
old payloads keep working.

Owns: enums, ``WindowParams``, ``ExportParams``, ``Img2VidParams``. Imports nothing from the WebUI.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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
    """First/last-frame latent blending on the img2img tab (SPEC §2.6)."""

    latent_power: float = 1.0
    latent_scale: float = 32.0
    latent_power_last: float = 1.0
    latent_scale_last: float = 32.0
