"""Which per-frame input each ControlNet unit gets, and how many frames the video then has.

The AnimateDiff panel offers one video for every ControlNet unit that has no input of its own.
This module decides, as plain data, which source each unit takes and how the frame count follows
from the sources' lengths; the adapter then writes the decision into the units. Imports nothing
from the WebUI (and nothing from ControlNet: units are described by ``UnitInputs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class Source(str, Enum):
    """Where a unit's control images come from, best first for the last four."""

    DISABLED = "disabled"  # unit off: left untouched
    OWN_IMAGE = "own_image"  # its single image, which then controls every frame
    OWN_FOLDER = "own_folder"  # its own batch folder (or image list): one image per frame
    I2I_BATCH = "i2i_batch"  # img2img Batch tab's input folder
    VIDEO_PATH = "video_path"  # the panel's folder of frames
    VIDEO_SOURCE = "video_source"  # the panel's video file, extracted to a folder
    NONE = "none"  # enabled, no input anywhere: ControlNet will report the missing input itself


@dataclass(frozen=True)
class UnitInputs:
    """A ControlNet unit as routing sees it: is it on, and which inputs does it already have."""

    enabled: bool
    has_image: bool = False
    has_batch_folder: bool = False
    has_mask: bool = False


@dataclass(frozen=True)
class UnitRoute:
    """The decision for one unit: ``folder`` to use as its batch input (None: keep its own input
    or leave it alone), and ``mask_folder`` to add as its batch mask folder (None: no change)."""

    source: Source
    folder: str | None = None
    mask_folder: str | None = None


def route_sources(
    units: Sequence[UnitInputs],
    *,
    i2i_batch_folder: str = "",
    video_path: str = "",
    video_source_folder: str = "",
    mask_path: str = "",
) -> list[UnitRoute]:
    """One route per unit, in order.

    A unit's own batch folder wins, then its own single image (kept: one image controls all
    frames), then the first non-empty of the img2img batch folder, ``video_path`` and the folder
    extracted from ``video_source``. ``mask_path`` is added to units that take one image per frame
    (own folder or a shared source) and have no mask; a single-image unit keeps its own mask.
    Disabled units are not touched.
    """
    shared = next(
        (
            (source, folder)
            for source, folder in (
                (Source.I2I_BATCH, i2i_batch_folder),
                (Source.VIDEO_PATH, video_path),
                (Source.VIDEO_SOURCE, video_source_folder),
            )
            if folder and folder.strip()
        ),
        (Source.NONE, None),
    )
    mask = mask_path.strip() or None
    routes = []
    for unit in units:
        if not unit.enabled:
            routes.append(UnitRoute(Source.DISABLED))
        elif unit.has_batch_folder:
            routes.append(UnitRoute(Source.OWN_FOLDER, None, None if unit.has_mask else mask))
        elif unit.has_image:
            routes.append(UnitRoute(Source.OWN_IMAGE))
        elif shared[0] is Source.NONE:
            routes.append(UnitRoute(Source.NONE))
        else:
            routes.append(UnitRoute(shared[0], shared[1].strip(), None if unit.has_mask else mask))
    return routes


def resolve_frame_count(requested: int, source_counts: Mapping[str, int]) -> int | None:
    """The number of frames to generate, given ``video_length`` and each control source's length.

    ``source_counts`` maps a source's name (for messages) to its image count; pass only sources
    that supply one image per frame (not units placed by ``keyframe:`` lines). With sources, 0
    means "as long as the shortest", a smaller number uses the first frames, and a larger one is
    refused: those frames would have no control image. Without sources the request stands, and 0
    returns None: the caller then uses the context size.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"video_length is {requested!r}; allowed: 0 (automatic) or a positive number")
    for name, count in source_counts.items():
        if count < 1:
            raise ValueError(f"control source {name!r} has {count} images; it needs at least 1")
    if not source_counts:
        return requested or None
    name, shortest = min(source_counts.items(), key=lambda item: item[1])
    if requested > shortest:
        raise ValueError(
            f"video_length is {requested}, but {name!r} has only {shortest} images; "
            f"allowed: 0 (use {shortest}) or 1 to {shortest}"
        )
    return requested or shortest
