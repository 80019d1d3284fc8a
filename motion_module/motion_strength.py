"""How strongly the motion module moves the picture: a global scale and an optional spatial mask.

Each motion layer returns x + delta, delta being its temporal transformer's residual (proj_out's
output). Motion strength makes that x + s·delta: s = ``scale`` everywhere, or per pixel
s = scale · (mask_min + (1 − mask_min) · mask), so white (1) gets ``scale`` and black (0) gets
``scale · mask_min``. Scale 0 leaves every layer's input unchanged (the UNet without motion); 2
doubles the motion residual. Held per job by the shared ``FrameLayout``; imports no WebUI module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SCALE_RANGE = (0.0, 2.0)


def _number(name: str, value: float, low: float, high: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and low <= value <= high):
        raise ValueError(f"{name} is {value!r}; allowed: a number {low:g}..{high:g}")
    return float(value)


def _check_mask(mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not mask.is_floating_point():
        shown = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"motion_mask is {shown}; allowed: a (height, width) float tensor, white = 1 = full motion, "
            "black = 0 = motion_mask_min"
        )
    if mask.numel() == 0 or not bool(((mask >= 0) & (mask <= 1)).all()):
        low, high = (float(mask.min()), float(mask.max())) if mask.numel() else (math.nan, math.nan)
        raise ValueError(
            f"motion_mask has values {low:g}..{high:g}; allowed: 0..1 (divide 8-bit pixels by 255)"
        )


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``mask`` (H, W) at (height, width): area averaging when shrinking both sides (each cell gets
    the mean of the mask over its footprint), bilinear (antialiased, half-pixel centres) otherwise."""
    if tuple(mask.shape) == (height, width):
        return mask
    m = mask[None, None].float()  # (H, W) -> (1, 1, H, W)
    if height <= mask.shape[0] and width <= mask.shape[1]:
        m = F.interpolate(m, size=(height, width), mode="area")
    else:
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return m[0, 0].clamp(0.0, 1.0)


@dataclass(frozen=True, eq=False)
class MotionStrength:
    """``scale`` 0..2 (API ``motion_scale``), an optional ``mask`` (API ``motion_mask``, any size,
    resized to each motion layer at run time) and ``mask_min`` 0..1 (API ``motion_mask_min``)."""

    scale: float = 1.0
    mask: torch.Tensor | None = None
    mask_min: float = 0.0
    _maps: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _number("motion_scale", self.scale, *SCALE_RANGE))
        object.__setattr__(self, "mask_min", _number("motion_mask_min", self.mask_min, 0.0, 1.0))
        if self.mask is not None:
            _check_mask(self.mask)

    @property
    def is_identity(self) -> bool:
        """True for scale 1 without a mask: layers then run exactly as without motion strength."""
        return self.scale == 1.0 and self.mask is None

    def scale_at(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> float | torch.Tensor:
        """The residual's multiplier at a layer of (height, width): ``scale``, or an (h, w) map.

        Maps are computed once per layer size, device and dtype, in float32 then cast.
        """
        if self.mask is None:
            return self.scale
        key = (height, width, str(device), dtype)
        if key not in self._maps:
            mask = resize_mask(self.mask, height, width)
            effective = self.scale * (self.mask_min + (1.0 - self.mask_min) * mask)
            self._maps[key] = effective.to(device=device, dtype=dtype)
        return self._maps[key]
