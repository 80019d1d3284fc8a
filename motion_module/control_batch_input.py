"""ControlNet's batch-input text for AnimateDiff, read and written, and the counts it must satisfy.

With AnimateDiff on, a ControlNet unit's batch input (the ``batch_images`` field of its API JSON)
is a folder on the first line, optionally followed by ``mask:<folder>`` (per-frame masks) and
``keyframe:i,j,...`` (the images go to these frames only). ControlNet reads each extra line only
when it starts exactly with one of those prefixes, trims the value, splits keyframes on commas and
ignores anything else. We parse the same syntax but refuse the lines ControlNet would silently
ignore or misread, so a typo is an error instead of a run without the intended control.
Imports nothing from the WebUI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FIELD = "batch_images"
MASK = "mask:"
KEYFRAME = "keyframe:"
_INDEX = re.compile(r"[0-9]+")


def _parse_keyframes(value: str, line: str) -> tuple[int, ...]:
    parts = [part.strip() for part in value.split(",")]
    bad = [part for part in parts if not _INDEX.fullmatch(part)]
    if bad:
        raise ValueError(
            f"keyframe {bad[0]!r} in {FIELD} line {line!r} is not a frame number; "
            "allowed: frame numbers from 0, separated by commas (keyframe:0,8,16)"
        )
    return tuple(int(part) for part in parts)


def parse_batch_input(text: str) -> tuple[str, str | None, tuple[int, ...] | None]:
    """(folder, mask folder or None, keyframes or None) from a batch-input text.

    Lines are split on newlines and trimmed of surrounding whitespace (so Windows line ends
    work); blank lines are skipped. The folder may be empty (the unit then has no batch input of
    its own). A repeated ``mask:``/``keyframe:`` line, an empty value or any other line is refused
    with a ValueError naming ``batch_images`` and quoting the line.
    """
    if not isinstance(text, str):
        raise ValueError(f"{FIELD} is {type(text).__name__}; expected text with the folder on line 1")
    first, *rest = text.split("\n")
    mask: str | None = None
    keyframes: tuple[int, ...] | None = None
    for raw in rest:
        line = raw.strip()
        if not line:
            continue
        if raw.startswith(MASK) and mask is None:
            mask = line[len(MASK) :].strip()
            if not mask:
                raise ValueError(f"{FIELD} line {line!r} names no folder; write mask:<folder>")
        elif raw.startswith(KEYFRAME) and keyframes is None:
            keyframes = _parse_keyframes(line[len(KEYFRAME) :], line)
        else:
            repeated = raw.startswith((MASK, KEYFRAME))
            raise ValueError(
                f"{FIELD} line {line!r} is "
                + ("a second line of its kind; give it once" if repeated else "not understood")
                + "; after the folder line, allowed: mask:<folder> and keyframe:i,j,... (each once)"
            )
    return first.strip(), mask, keyframes


def build_batch_input(
    folder: str, mask_folder: str | None = None, keyframes: Sequence[int] | None = None
) -> str:
    """The batch-input text ControlNet reads back as these values (``parse_batch_input`` inverts it).

    Folders are trimmed; a folder containing a line break cannot be written and is refused, as
    are empty or negative keyframe lists.
    """
    for name, value in (("folder", folder), ("mask folder", mask_folder)):
        if value is not None and ("\n" in value or "\r" in value):
            raise ValueError(f"{FIELD} {name} {value!r} contains a line break")
    if not folder or not folder.strip():
        raise ValueError(f"{FIELD} folder is empty; a batch input needs a folder of images")
    lines = [folder.strip()]
    if mask_folder is not None:
        if not mask_folder.strip():
            raise ValueError(f"{FIELD} mask folder is empty; pass None for no masks")
        lines.append(MASK + mask_folder.strip())
    if keyframes is not None:
        values = list(keyframes)
        if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in values):
            raise ValueError(
                f"keyframe list {values!r} is invalid; allowed: one or more frame numbers from 0"
            )
        lines.append(KEYFRAME + ",".join(str(k) for k in values))
    return "\n".join(lines)


def check_keyframes(keyframes: Sequence[int], frames: int, image_count: int) -> None:
    """Keyframes must be frames of the video, ascending, each once, one per control image.

    Image ``i`` (in natural file order) is placed at ``keyframes[i]``; frames not listed get no
    control, so a keyframe past the end would be an image silently lost.
    """
    last = -1
    for key in keyframes:
        if not 0 <= key < frames:
            raise ValueError(
                f"keyframe {key} is outside the video; allowed: 0 to {frames - 1} (video_length {frames})"
            )
        if key <= last:
            raise ValueError(
                f"keyframe {key} comes after keyframe {last}; allowed: frame numbers in ascending order, "
                "each once"
            )
        last = key
    if len(keyframes) != image_count:
        raise ValueError(
            f"{len(keyframes)} keyframes for {image_count} control images; give one keyframe per image"
        )


def check_mask_count(mask_count: int, image_count: int, field: str = "mask_path") -> None:
    """A mask folder must hold one mask (used for every frame) or one per image.

    Compare whole folders, before cutting either to ``video_length``: masks are matched to images
    by position in natural order, so a different count would pair the wrong ones.
    """
    if mask_count not in (1, image_count):
        raise ValueError(
            f"{field} holds {mask_count} masks for {image_count} images; allowed: 1 mask for all frames "
            f"or {image_count} (one per image)"
        )
