"""Which files and folders a request may name, and how a folder of frames is listed.

Video-to-video takes paths from the UI and the API (``video_source``, ``video_path``,
``mask_path``). When the WebUI listens beyond localhost those paths come from strangers, so they
are checked against the folders the adapter allows; and a folder of frames is listed the way the
WebUI lists it (hidden files skipped, natural order), so our frame counts match what ControlNet
loads. Imports nothing from the WebUI.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".gif", ".webp")
MEDIA_SUFFIXES = tuple(dict.fromkeys(IMAGE_SUFFIXES + VIDEO_SUFFIXES))

_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> list[int | str]:
    """Sort key putting ``frame2`` before ``frame10``; letters compare case-insensitively.

    The same order as the WebUI's own file listing, which ControlNet uses to load a batch folder:
    both sides must agree on which file is frame ``i``.
    """
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def _roots_text(allowed_roots: Sequence[str | os.PathLike]) -> str:
    return ", ".join(repr(str(root)) for root in allowed_roots) or "none"


def _inside(path: Path, allowed_roots: Sequence[str | os.PathLike]) -> bool:
    return any(path.is_relative_to(Path(root).resolve()) for root in allowed_roots)


def check_readable_path(
    path: str | os.PathLike, field: str, allowed_roots: Sequence[str | os.PathLike] | None
) -> Path:
    """The resolved path of an existing media file or folder that this request may read.

    ``allowed_roots`` None means any path (the WebUI serves only this machine); otherwise the path,
    with every symlink and ``..`` resolved, must lie inside one of the roots. The roots are checked
    before existence so that a refused path does not reveal whether it exists. Files must have one
    of ``MEDIA_SUFFIXES`` (after resolving links: ``a.png`` pointing at a text file is refused).
    """
    text = os.fspath(path).strip() if isinstance(path, str | os.PathLike) else ""
    if not text:
        raise ValueError(f"{field} is empty; give a file or folder path")
    try:
        resolved = Path(text).resolve()
    except (OSError, RuntimeError) as error:  # symlink loops
        raise ValueError(f"{field} {text!r} cannot be resolved: {error}") from error
    if allowed_roots is not None and not _inside(resolved, allowed_roots):
        raise ValueError(
            f"{field} {text!r} is outside the folders this WebUI may read from "
            f"({_roots_text(allowed_roots)}); move the files there or ask the admin to allow the folder"
        )
    if resolved.is_dir():
        return resolved
    if not resolved.is_file():
        raise ValueError(f"{field} {text!r} does not exist")
    if resolved.suffix.lower() not in MEDIA_SUFFIXES or Path(text).suffix.lower() not in MEDIA_SUFFIXES:
        raise ValueError(
            f"{field} {text!r} is not a video or image file; allowed: {', '.join(MEDIA_SUFFIXES)}"
        )
    return resolved


def list_frame_files(
    folder: str | os.PathLike,
    field: str = "video_path",
    allowed_roots: Sequence[str | os.PathLike] | None = None,
) -> list[str]:
    """Image files of ``folder`` in natural order, as paths joined onto ``folder``.

    Hidden files, subfolders and non-image files are skipped. An empty or missing folder is
    refused, naming ``field``: a video with no frames is always a mistake. With ``allowed_roots``,
    a file that links outside the roots is refused too.
    """
    checked = check_readable_path(folder, field, allowed_roots)
    if not checked.is_dir():
        raise ValueError(f"{field} {os.fspath(folder)!r} is a file; give a folder of frames")
    base = os.fspath(folder).strip()
    files = []
    for name in sorted(os.listdir(checked), key=natural_key):
        full = os.path.join(base, name)
        if (
            name.startswith(".")
            or Path(name).suffix.lower() not in IMAGE_SUFFIXES
            or not os.path.isfile(full)
        ):
            continue
        if allowed_roots is not None and not _inside(Path(full).resolve(), allowed_roots):
            raise ValueError(
                f"{field} {base!r} holds {name!r}, which links outside the folders this WebUI may "
                f"read from ({_roots_text(allowed_roots)})"
            )
        files.append(full)
    if not files:
        raise ValueError(f"{field} {base!r} holds no image files; allowed: {', '.join(IMAGE_SUFFIXES)}")
    return files
