"""Frames of one video -> files on disk, and the strings the API returns.

``export`` is the one call per video: it prepares the frames (ping-pong, interpolation) and
hands them to ``export_video``, which names the files (``<outdir>/<folder>/YYYY-MM-DD/{seq:05d}-{seed}[-{id}]``,
``folder`` being ``AnimateDiff``, or ``AnimateDiff/svd`` for Stable Video Diffusion),
runs every requested writer from ``export_writers.WRITERS`` under a temporary name and publishes
each file by an atomic rename, so a half-written or failed file is never visible. One format
failing never stops the others: the result lists written paths and errors per format.
Imports nothing from the WebUI; the adapter (scripts/animatediff_webui/output.py) calls this.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from motion_module.export_writers import WRITERS, ExportError, WriteJob, WriterSpec
from motion_module.interpolation import Interpolator, interpolate
from motion_module.params import ClosedLoop, ExportFormat, ExportParams, Interp, WindowParams

log = logging.getLogger("animatediff")

__all__ = [
    "ExportError",
    "ExportResult",
    "VideoTarget",
    "WRITERS",
    "api_images",
    "export",
    "export_video",
    "next_sequence_number",
    "ping_pong",
    "prepare_frames",
    "sanitize_request_id",
]

DEFAULT_FOLDER = "AnimateDiff"
API_VIDEO_ORDER = (ExportFormat.GIF, ExportFormat.MP4, ExportFormat.WEBP, ExportFormat.WEBM)
_SEQ_NAME = re.compile(r"^\.?(\d+)[-.]")  # "00012-42.gif", ".00013.reserved", ".00012-42.ab.part.mp4"


@dataclass
class ExportResult:
    """What one video's export produced: paths per written format, errors per failed format."""

    stem: str  # file name without extension, e.g. "00003-1234-req7"
    frames: list[Image.Image] = field(repr=False)  # what the files hold (after ping-pong/interp)
    info: str = field(default="", repr=False)  # the infotext written into the files
    paths: dict[ExportFormat, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # format name -> message
    seconds: dict[ExportFormat, float] = field(default_factory=dict, repr=False)  # time per writer

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class VideoTarget:
    """Where one video is written and what its files carry."""

    outdir: str | os.PathLike
    seed: int
    info: str = ""  # infotext, written into the files
    request_id: str = ""  # appended to the file name
    audio: str | os.PathLike | None = None  # soundtrack for MP4/WebM (see audio_mux); None: silent
    folder: str = DEFAULT_FOLDER  # under outdir, holding one folder per date


def export(
    frames: Sequence[Image.Image | np.ndarray],
    params: ExportParams,
    window: WindowParams,
    target: VideoTarget,
    *,
    interpolator: Interpolator | None = None,
    now: datetime | None = None,
) -> ExportResult:
    """One video from sampled frames to files: ``prepare_frames``, then ``export_video``."""
    frames = prepare_frames(
        frames, params, closed_loop=window.closed_loop, context=window.context, interpolator=interpolator
    )
    return export_video(
        frames,
        params,
        target.outdir,
        target.seed,
        info=target.info,
        request_id=target.request_id,
        now=now,
        audio=target.audio,
        subfolder=target.folder,
    )


# ---------------------------------------------------------------------------------------------
# Frames before encoding


def ping_pong(frames: Sequence[Image.Image]) -> list[Image.Image]:
    """Append the frames backwards without repeating either end: N -> 2N-2 (N >= 2).

    Closed loop "A" with frames <= context: the video then plays forth and back seamlessly.
    """
    frames = list(frames)
    return frames + frames[-2:0:-1] if len(frames) > 2 else frames


def prepare_frames(
    frames: Sequence[Image.Image],
    params: ExportParams,
    *,
    closed_loop: ClosedLoop = ClosedLoop.N,
    context: int = 16,
    interpolator: Interpolator | None = None,
) -> list[Image.Image]:
    """The frames a video holds: ping-pong for closed loop A (frames <= context), then interpolation."""
    frames = [to_rgb(f) for f in frames]
    if closed_loop is ClosedLoop.A and len(frames) <= context:
        frames = ping_pong(frames)
    if params.interp is not Interp.OFF and params.interp_x > 1 and len(frames) > 1:
        frames = interpolate(frames, params.interp_x, interpolator)
    return frames


def to_rgb(frame: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or (h, w, 3) uint8 array -> RGB PIL image (videos carry no alpha)."""
    if isinstance(frame, np.ndarray):
        frame = Image.fromarray(frame)
    return frame if frame.mode == "RGB" else frame.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Names


def sanitize_request_id(request_id: str) -> str:
    """A safe file-name part: path parts joined by '_', only [A-Za-z0-9_.-], never '..', <= 64 chars."""
    parts = [part for part in re.split(r"[\\/]+", str(request_id or "")) if part.strip(".")]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(parts))
    return re.sub(r"\.{2,}", ".", cleaned).strip(".")[:64]


def next_sequence_number(folder: Path) -> int:
    """One more than the largest leading number of any entry (files, folders, reservations)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := _SEQ_NAME.match(name))]
    return max(numbers, default=-1) + 1


@contextlib.contextmanager
def reserved_stem(folder: Path, seed: int, request_id: str) -> Iterator[str]:
    """Pick the next free ``{seq:05d}-{seed}[-{id}]`` and hold it with an O_EXCL marker file.

    Two exports into the same folder at once therefore never get the same number.
    """
    while True:
        seq = next_sequence_number(folder)
        marker = folder / f".{seq:05d}.reserved"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            continue
    rid = sanitize_request_id(request_id)
    try:
        yield f"{seq:05d}-{seed}" + (f"-{rid}" if rid else "")
    finally:
        marker.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Export


def export_video(
    frames: Sequence[Image.Image | np.ndarray],
    params: ExportParams,
    outdir: str | os.PathLike,
    seed: int,
    *,
    info: str = "",
    request_id: str = "",
    now: datetime | None = None,
    gif_dither: str = "none",
    audio: str | os.PathLike | None = None,
    subfolder: str = DEFAULT_FOLDER,
) -> ExportResult:
    """Write one video in every file format of ``params.formats``; never raises for a format.

    ``frames`` are final (see ``prepare_frames``). ``Frame`` is an API flag, not a file, and is
    ignored here. Errors (no frames, mixed sizes, unwritable folder, missing
    encoder, writer failure) are logged once and listed in ``result.errors``. ``audio`` puts a
    soundtrack on MP4 and WebM, cut or padded to the frames' duration; unreadable audio fails
    those formats (listed in ``result.errors``, no file written) and leaves the others alone.
    ``subfolder`` is the folder under ``outdir`` that holds one folder per date.
    """
    frames = [to_rgb(f) for f in frames]
    result = ExportResult(stem="", frames=frames, info=info)
    wanted = [fmt for fmt in dict.fromkeys(params.formats) if fmt in WRITERS]  # Frame is no file
    if not wanted:
        return result
    problem = _frames_problem(frames)
    folder = Path(outdir) / subfolder / (now or datetime.now()).strftime("%Y-%m-%d")
    if problem is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problem = f"cannot create the output folder {folder}: {e}"
    if problem is not None:
        for fmt in wanted:
            _fail(result, fmt.value, problem)
        return result

    job = WriteJob(frames=frames, params=params, info=info, gif_dither=gif_dither, audio=audio)
    try:
        with reserved_stem(folder, seed, request_id) as stem:
            result.stem = stem
            for fmt in wanted:
                start = time.perf_counter()
                try:
                    result.paths[fmt] = _write_atomically(WRITERS[fmt], job, folder, stem)
                    result.seconds[fmt] = time.perf_counter() - start
                except Exception as e:  # reported per format; the other formats still get written
                    _fail(
                        result,
                        fmt.value,
                        _cause(fmt.value, e),
                        unexpected=not isinstance(e, ExportError | OSError),
                    )
    except OSError as e:  # the reservation marker itself could not be created
        for fmt in wanted:
            if fmt not in result.paths:
                _fail(result, fmt.value, f"cannot write into {folder}: {e}")
    if result.paths:
        log.info("AnimateDiff: saved %s", ", ".join(str(p) for p in result.paths.values()))
    return result


def _frames_problem(frames: Sequence[Image.Image]) -> str | None:
    if not frames:
        return "no frames to write (the generation produced no images)"
    sizes = sorted({f.size for f in frames})
    if len(sizes) > 1:
        return f"frames have different sizes {sizes}; every frame of a video must be the same size"
    return None


def _write_atomically(spec: WriterSpec, job: WriteJob, folder: Path, stem: str) -> Path:
    """Write under a hidden temporary name, then rename; on any failure nothing stays behind."""
    final = folder / (stem + spec.ext)
    temp = folder / f".{stem}.{secrets.token_hex(4)}.part{spec.ext}"
    try:
        spec.write(job, temp)
        if spec.is_folder and final.exists():
            raise ExportError(f"{final} already exists; refusing to merge frames into it")
        os.replace(temp, final)
    except BaseException:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        raise
    return final


def _cause(fmt: str, e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.removeprefix(f"{fmt}: ") if isinstance(e, ExportError) else f"{type(e).__name__}: {text}"


def _fail(result: ExportResult, fmt: str, cause: str, unexpected: bool = False) -> None:
    message = f"{fmt} not written: {cause}"
    result.errors[fmt] = message
    log.error("AnimateDiff export: %s", message, exc_info=unexpected)


# ---------------------------------------------------------------------------------------------
# API payload


def api_images(results: Sequence[ExportResult], formats: Sequence[ExportFormat]) -> list[str]:
    """The API's ``images``: every video file base64-encoded, videos in order and per video
    GIF, MP4, WEBP, WEBM; then, with ``Frame`` in ``formats``, every frame of every video as a
    base64 PNG (video after video). PNG frames are saved to disk, never returned.
    """
    images = [
        base64.b64encode(result.paths[fmt].read_bytes()).decode("ascii")
        for result in results
        for fmt in API_VIDEO_ORDER
        if fmt in result.paths
    ]
    if ExportFormat.FRAME in formats:
        images += [_png_base64(frame, result.info) for result in results for frame in result.frames]
    return images


def _png_base64(frame: Image.Image, info: str) -> str:
    text = PngImagePlugin.PngInfo()
    if info:
        text.add_text("parameters", info)
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG", pnginfo=text, compress_level=4)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
