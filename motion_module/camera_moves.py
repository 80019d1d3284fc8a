"""2D camera moves for img2vid: each frame's starting image is the init image zoomed, turned and
shifted a little more than the frame before.

``zoom``, ``angle``, ``translate_x`` and ``translate_y`` are Deforum-style keyframe strings
(``0:(1.0), 15:(1.05)``), read per frame: frame k's values are one step of motion (zoom factor,
degrees counter-clockwise, pixels right and down) applied on top of frame k-1's picture, so a
constant ``translate_x`` of 8 pans 8 px per frame and frame 0 is the init image itself. The steps
are multiplied into one affine matrix per frame and the init image is warped once with it: a
long pan stays as sharp as a short one, where warping each frame's result again would blur more
with every frame. ``camera_border`` says what fills the area the move uncovers. The adapter
encodes the frames as per-frame init latents. Imports nothing from the WebUI.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .keyframe_strings import keyframe_values

CAMERA_BORDERS = {
    "replicate": cv2.BORDER_REPLICATE,  # the edge pixels stretched outwards
    "reflect": cv2.BORDER_REFLECT_101,  # the picture mirrored at its edge
    "zero": cv2.BORDER_CONSTANT,  # black
}
STILL = {"zoom": "0:(1.0)", "angle": "0:(0)", "translate_x": "0:(0)", "translate_y": "0:(0)"}


@dataclass(frozen=True)
class CameraSchedule:
    """Per-frame steps of motion (index k = the step from frame k-1 to frame k; step 0 unused)."""

    zoom: tuple[float, ...]
    angle: tuple[float, ...]
    translate_x: tuple[float, ...]
    translate_y: tuple[float, ...]

    @property
    def still(self) -> bool:
        """True when no frame moves: zoom 1, angle 0, no translation from frame 1 on."""
        return (
            all(z == 1.0 for z in self.zoom[1:])
            and not any(self.angle[1:])
            and not any(self.translate_x[1:])
            and not any(self.translate_y[1:])
        )


def camera_schedule(
    frames: int,
    zoom: str | float = STILL["zoom"],
    angle: str | float = STILL["angle"],
    translate_x: str | float = STILL["translate_x"],
    translate_y: str | float = STILL["translate_y"],
) -> CameraSchedule:
    """Parse the four keyframe strings (or plain numbers) for ``frames`` frames.

    zoom: factor per frame, > 0 (1.05 = 5 % closer each frame); angle: degrees per frame,
    counter-clockwise; translate_x / translate_y: pixels per frame, right / down. A bad string is
    refused naming its field and the character position.
    """
    return CameraSchedule(
        zoom=tuple(keyframe_values(zoom, frames, "zoom", low=0.0, low_inclusive=False)),
        angle=tuple(keyframe_values(angle, frames, "angle")),
        translate_x=tuple(keyframe_values(translate_x, frames, "translate_x")),
        translate_y=tuple(keyframe_values(translate_y, frames, "translate_y")),
    )


def camera_matrices(schedule: CameraSchedule, width: int, height: int) -> list[np.ndarray]:
    """One 2×3 affine matrix per frame, mapping init-image pixels to frame pixels.

    Step k turns by angle[k] and scales by zoom[k] about the image centre, then shifts by
    (translate_x[k], translate_y[k]); frame k's matrix is step k after frame k-1's (frame 0:
    identity).
    """
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    total = np.eye(3)
    out = [total[:2].copy()]
    for k in range(1, len(schedule.zoom)):
        step = np.eye(3)
        step[:2] = cv2.getRotationMatrix2D(centre, schedule.angle[k], schedule.zoom[k])
        step[0, 2] += schedule.translate_x[k]
        step[1, 2] += schedule.translate_y[k]
        total = step @ total  # (3, 3): frame k's step after everything before it
        out.append(total[:2].copy())
    return out


def check_border(border: str) -> int:
    if border not in CAMERA_BORDERS:
        raise ValueError(
            f"camera_border {border!r} is not a border mode; allowed: {', '.join(CAMERA_BORDERS)}"
        )
    return CAMERA_BORDERS[border]


def camera_frames(
    image: Image.Image,
    frames: int,
    *,
    zoom: str | float = STILL["zoom"],
    angle: str | float = STILL["angle"],
    translate_x: str | float = STILL["translate_x"],
    translate_y: str | float = STILL["translate_y"],
    border: str = "replicate",
) -> list[Image.Image]:
    """``frames`` starting images: frame k is ``image`` moved by the first k steps of the schedule.

    Same size and mode as ``image`` (RGB, RGBA or L; other modes become RGB). Frames the
    schedule leaves in place are exact copies of ``image``.
    """
    flag = check_border(border)
    schedule = camera_schedule(frames, zoom, angle, translate_x, translate_y)
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    pixels = np.asarray(image)  # (h, w) or (h, w, c)
    height, width = pixels.shape[:2]
    out = []
    for matrix in camera_matrices(schedule, width, height):
        if np.array_equal(matrix, np.eye(3)[:2]):
            out.append(image.copy())
            continue
        moved = cv2.warpAffine(
            pixels, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=flag, borderValue=0
        )
        out.append(Image.fromarray(moved, mode=image.mode))
    return out
