"""Colour matching: every frame's colour distribution pulled to a reference image's, in LAB space.

Long videos drift in colour (a cast creeps in, contrast slowly changes) because each window is
sampled on its own. Matching each frame's per-channel mean and standard deviation in CIELAB to
a reference (the first frame, or the img2img init image) removes that drift while keeping each
frame's own detail: L* carries lightness, a*/b* the cast, so a shift in one does not bleed into
the others as it would in RGB. Runs on decoded frames, before export. Imports nothing from the
WebUI.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

FLAT_STD = 1e-3  # a channel flatter than this (in LAB units) is shifted, not stretched


def match_colors(
    frames: Sequence[Image.Image],
    reference: Image.Image | None = None,
    *,
    enabled: bool = True,
) -> list[Image.Image]:
    """New list of frames whose LAB mean and std per channel equal the reference's.

    ``reference`` None: the first frame, which is then returned as it is. With ``enabled``
    False the same frame objects come back untouched (bit-identical). Frames come back RGB,
    each at its own size; the reference may have any size (only its statistics are used).
    """
    frames = list(frames)
    if not enabled or not frames:
        return frames
    target_mean, target_std = lab_stats(frames[0] if reference is None else reference)
    out = []
    for index, frame in enumerate(frames):
        if reference is None and index == 0:
            out.append(frame)
        else:
            out.append(match_frame(frame, target_mean, target_std))
    return out


def match_frame(frame: Image.Image, target_mean: np.ndarray, target_std: np.ndarray) -> Image.Image:
    """One frame moved to the target LAB statistics: (x - mean) · target_std / std + target_mean."""
    lab = to_lab(frame)  # (h, w, 3) float32: L* 0-100, a*, b* about -128-127
    mean, std = channel_stats(lab)
    scale = np.where(std > FLAT_STD, target_std / np.maximum(std, FLAT_STD), 1.0)
    matched = (lab - mean) * scale + target_mean
    matched[..., 0] = np.clip(matched[..., 0], 0.0, 100.0)
    return from_lab(matched.astype(np.float32))


def lab_stats(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an image in CIELAB (each shape (3,))."""
    return channel_stats(to_lab(image))


def channel_stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = lab.reshape(-1, 3).astype(np.float64)  # (h, w, 3) -> (h·w, 3)
    return pixels.mean(0), pixels.std(0)


def to_lab(image: Image.Image) -> np.ndarray:
    """RGB (sRGB, D65) -> CIELAB as float32 (h, w, 3), through OpenCV's float conversion."""
    rgb = np.asarray(image.convert("RGB"), np.float32) / 255.0
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


def from_lab(lab: np.ndarray) -> Image.Image:
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
