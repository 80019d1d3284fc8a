"""Frame interpolation ("Interp X"): each frame becomes X frames, original frames kept exactly.

N frames become (N-1)·X + 1: X-1 in-betweens go into each gap and the last frame stays last.
The built-in interpolator estimates dense optical flow both ways (OpenCV Farneback), warps both
neighbours to the in-between time and blends them, so it works with no model download. The
adapter may pass a better ``Interpolator`` (FILM from the Deforum extension) with the same
signature. Imports nothing from the WebUI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

FLOW_MAX_SIDE = 256  # flow is estimated at most at this short side (see pair_flow)
# interpolator(frames, x) -> (N-1)·x + 1 frames, frames[i] at position i·x unchanged
Interpolator = Callable[[Sequence[Image.Image], int], list[Image.Image]]


def interpolate(
    frames: Sequence[Image.Image], x: int, interpolator: Interpolator | None = None
) -> list[Image.Image]:
    """Run ``interpolator`` (default: optical flow) and check it kept its promise."""
    if x < 1:
        raise ValueError(f"Interp X must be at least 1 (1 = no interpolation); got {x}")
    frames = list(frames)
    if x == 1 or len(frames) < 2:
        return frames
    out = (interpolator or optical_flow_interpolator)(frames, x)
    expected = (len(frames) - 1) * x + 1
    if len(out) != expected:
        raise RuntimeError(
            f"the frame interpolator returned {len(out)} frames for {len(frames)} frames at X={x}; "
            f"expected (N-1)·X+1 = {expected}"
        )
    return out


def optical_flow_interpolator(frames: Sequence[Image.Image], x: int) -> list[Image.Image]:
    out: list[Image.Image] = []
    for a, b in zip(frames[:-1], frames[1:], strict=True):
        out.append(a)
        out += [Image.fromarray(im) for im in in_betweens(np.asarray(a), np.asarray(b), x)]
    out.append(frames[-1])
    return out


def in_betweens(a: np.ndarray, b: np.ndarray, x: int) -> list[np.ndarray]:
    """The x-1 frames between a and b (h, w, 3 uint8) at times 1/x, 2/x, ..., (x-1)/x.

    Flow is estimated once per pair in both directions. For time t the flow from the in-between
    frame back to each neighbour is approximated from the two pair flows (assuming straight,
    steady motion), each neighbour is warped there, and the two are blended by closeness in time.
    """
    flow_ab, flow_ba = pair_flow(a, b), pair_flow(b, a)  # (h, w, 2) pixel offsets
    h, w = a.shape[:2]
    grid = np.dstack(np.meshgrid(np.arange(w), np.arange(h))).astype(np.float32)  # (h, w, 2) as x, y
    frames = []
    for k in range(1, x):
        t = k / x
        to_a = -(1 - t) * t * flow_ab + t * t * flow_ba  # offset from the in-between to a
        to_b = (1 - t) ** 2 * flow_ab - t * (1 - t) * flow_ba  # offset from the in-between to b
        warped_a = _warp(a, grid + to_a)
        warped_b = _warp(b, grid + to_b)
        blend = (1 - t) * warped_a.astype(np.float32) + t * warped_b.astype(np.float32)
        frames.append(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    return frames


def pair_flow(a: np.ndarray, b: np.ndarray, max_side: int = FLOW_MAX_SIDE) -> np.ndarray:
    """Dense flow a -> b: where each pixel of a moved to in b, (h, w, 3) -> (h, w, 2).

    Large frames are analysed at reduced size (short side ``max_side``) and the flow scaled back:
    motion between video frames is smooth, and this is several times faster at 512 px and up.
    """
    h, w = a.shape[:2]
    scale = min(1.0, max_side / min(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    gray_a, gray_b = (cv2.cvtColor(cv2.resize(im, size, interpolation=cv2.INTER_AREA) if scale < 1 else im,
                                   cv2.COLOR_RGB2GRAY) for im in (a, b))  # fmt: skip
    # A window of ~1/8 of the short side follows motions of a few percent of the frame; OpenCV
    # itself stops the pyramid where a level would be smaller than 32 px.
    winsize = int(np.clip(min(gray_a.shape) // 8, 15, 63)) | 1
    flow = cv2.calcOpticalFlowFarneback(
        gray_a, gray_b, None, pyr_scale=0.5, levels=5, winsize=winsize, iterations=5,
        poly_n=7, poly_sigma=1.5, flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN,
    )  # fmt: skip
    if scale < 1:
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) / scale
    return flow


def _warp(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample image at coords (h, w, 2 as x, y), replicating the border for points outside."""
    return cv2.remap(image, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
