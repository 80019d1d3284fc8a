"""X/Y/Z plot axes: each names a parameter field and leaves an override on the cell's ``p``.

The override dict is replaced, never mutated, because XYZ cells are shallow copies of one ``p``;
``args.for_job`` reads it. Values are checked by the same coercion the parser uses, so a bad axis
value is refused before the plot starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from motion_module.params import (
    ClosedLoop,
    FreeInitFilter,
    Interp,
    NoiseType,
    TravelCurve,
    WindowMode,
    coerce_field,
)

from . import host_changes
from .args import XYZ_ATTR, ui_value

log = logging.getLogger("animatediff")

PREFIX = "[AnimateDiff] "


@dataclass(frozen=True)
class Axis:
    label: str
    key: str
    kind: type
    img2img_only: bool = False
    choices: Callable[[], list[str]] | None = None


AXES: tuple[Axis, ...] = (
    Axis("Enabled", "enable", str, choices=lambda: ["True", "False"]),
    Axis("Motion Module", "model", str),
    Axis("Video length", "video_length", int),
    Axis("FPS", "fps", int),
    Axis("Closed loop", "closed_loop", str, choices=lambda: [c.value for c in ClosedLoop]),
    Axis("Batch size", "batch_size", int),
    Axis("Stride", "stride", int),
    Axis("Overlap", "overlap", int),
    Axis("Interp", "interp", str, choices=lambda: [i.value for i in Interp]),
    Axis("Interp X", "interp_x", int),
    Axis("Video path", "video_path", str),
    Axis("Latent power", "latent_power", float, img2img_only=True),
    Axis("Latent scale", "latent_scale", float, img2img_only=True),
    Axis("Latent power last", "latent_power_last", float, img2img_only=True),
    Axis("Latent scale last", "latent_scale_last", float, img2img_only=True),
    Axis("FreeInit", "freeinit_enable", str, choices=lambda: ["True", "False"]),
    Axis("FreeInit filter", "freeinit_filter", str, choices=lambda: [f.value for f in FreeInitFilter]),
    Axis("FreeInit d_s", "freeinit_ds", float),
    Axis("FreeInit d_t", "freeinit_dt", float),
    Axis("FreeInit iterations", "freeinit_iters", int),
    Axis("Noise", "noise_type", str, choices=lambda: [t.value for t in NoiseType]),
    Axis("Motion scale", "motion_scale", float),
    Axis("Motion in black areas", "motion_mask_min", float),
    Axis("Window mode", "window_mode", str, choices=lambda: [m.value for m in WindowMode]),
    Axis("Travel curve", "travel_curve", str, choices=lambda: [c.value for c in TravelCurve]),
    Axis("Travel curve args", "travel_curve_args", str),
    Axis("Colour match", "color_match", str, choices=lambda: ["True", "False"]),
)


def apply(key: str) -> Callable[[Any, Any, Any], None]:
    def apply_override(p: Any, value: Any, _values: Any) -> None:
        host_changes.xyz_override(p, XYZ_ATTR, key, value)

    return apply_override


def confirm(key: str) -> Callable[[Any, list[Any]], None]:
    def check(_p: Any, values: list[Any]) -> None:
        for value in values:
            coerce_field(key, value)  # ValueError names the field, the value and what is allowed

    return check


def format_value(p: Any, opt: Any, value: Any) -> str:
    return f"{opt.label[len(PREFIX) :]}: {ui_value(value)}"


def register(xyz_module: Any) -> int:
    """Append our axes to the X/Y/Z plot script's list (once); returns how many were added."""
    existing = {getattr(opt, "label", None) for opt in xyz_module.axis_options}
    added = 0
    for axis in AXES:
        label = PREFIX + axis.label
        if label in existing:
            continue
        kind = xyz_module.AxisOptionImg2Img if axis.img2img_only else xyz_module.AxisOption
        option = kind(
            label,
            axis.kind,
            apply(axis.key),
            format_value=format_value,
            confirm=confirm(axis.key),
            choices=axis.choices,
        )
        xyz_module.axis_options.append(option)
        added += 1
    return added


def find_xyz_module(scripts_data: list[Any]) -> Any | None:
    """The loaded X/Y/Z plot module (the WebUI names script modules after their file)."""
    for data in scripts_data:
        module = getattr(data, "module", None)
        if getattr(module, "__name__", "") == "xyz_grid.py" and hasattr(module, "axis_options"):
            return module
    return None
