"""Videos into folders of frames for ControlNet: every frame, in order, as ``00000.png``, ``00001.png``...

A video given to ControlNet becomes one control image per generated frame, so the frame count the
UI shows after upload, the number of files extracted and the video's length must be the same
number: nothing is de-duplicated or re-timed. Decoders, tried in turn until one yields frames:
Pillow for GIF and animated WebP (it knows each frame's duration), ffmpeg through imageio-ffmpeg,
then OpenCV. Also turns base64 video data from the API into a file. Imports nothing from the WebUI.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

log = logging.getLogger("animatediff")

FIELD = "video_source"
METHODS = ("auto", "ffmpeg", "opencv", "pillow")
DEFAULT_FRAME_MS = 100  # a GIF frame without a delay plays at 10 fps in browsers

# sink(frame) receives each decoded RGB frame; None means "only count the frames".
Sink = Callable[[Image.Image], None] | None
# decoder(path, sink) -> (frames, fps); raises OSError/RuntimeError/ValueError when it cannot decode.
Decoder = Callable[[str, Sink], tuple[int, float]]


@dataclass(frozen=True)
class VideoInfo:
    """What extraction produced: ``files`` are the ``count`` frame paths in order, ``size`` (w, h)."""

    count: int
    fps: float
    size: tuple[int, int]
    folder: Path
    files: tuple[str, ...]


def sniff_container(head: bytes) -> str | None:
    """File suffix for the container whose magic bytes start ``head``, or None if not a video."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if head[:4] == b"RIFF":
        return {b"WEBP": ".webp", b"AVI ": ".avi"}.get(head[8:12])
    if head[4:8] == b"ftyp":
        return ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # QuickTime files without an ftyp box
        return ".mov"
    if head[:4] == b"\x1aE\xdf\xa3":  # EBML: Matroska, or WebM when its doctype says so
        return ".webm" if b"webm" in head[:64] else ".mkv"
    return None


def _decode_pillow(path: str, sink: Sink) -> tuple[int, float]:
    total_ms = 0
    with Image.open(path) as image:
        count = getattr(image, "n_frames", 1)
        for index in range(count):
            image.seek(index)
            image.load()  # WebP sets this frame's duration only when it is loaded
            total_ms += image.info.get("duration") or DEFAULT_FRAME_MS
            if sink is not None:
                sink(image.convert("RGB"))
    return count, 1000.0 * count / total_ms


def _decode_ffmpeg(path: str, sink: Sink) -> tuple[int, float]:
    import imageio_ffmpeg

    # passthrough: one output frame per decoded frame, never duplicated or dropped to fit a rate
    params = ["-map", "0:v:0", "-fps_mode", "passthrough"]
    # counting pipes one grey byte per pixel instead of three; the frame count is the same
    pix_fmt, bits = ("rgb24", 24) if sink is not None else ("gray", 8)
    frames = imageio_ffmpeg.read_frames(path, pix_fmt=pix_fmt, bits_per_pixel=bits, output_params=params)
    try:
        meta = next(frames)
        size = tuple(meta["size"])
        count = 0
        for raw in frames:
            if sink is not None:
                sink(Image.frombytes("RGB", size, raw))
            count += 1
    finally:
        frames.close()
    return count, float(meta.get("fps") or 0.0)


def _decode_opencv(path: str, sink: Sink) -> tuple[int, float]:
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise OSError("OpenCV cannot open it")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = 0
        while True:
            if sink is None:
                ok = capture.grab()
            else:
                ok, bgr = capture.read()
                if ok:
                    sink(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            if not ok:
                return count, fps
            count += 1
    finally:
        capture.release()


DECODERS: dict[str, Decoder] = {"pillow": _decode_pillow, "ffmpeg": _decode_ffmpeg, "opencv": _decode_opencv}


def _decoders(path: str, method: str) -> list[str]:
    if method not in METHODS:
        raise ValueError(f"frame extraction method {method!r} is unknown; allowed: {', '.join(METHODS)}")
    if method != "auto":
        return [method]
    with open(path, "rb") as file:
        animated_image = sniff_container(file.read(64)) in (".gif", ".webp")
    return ["pillow", "ffmpeg", "opencv"] if animated_image else ["ffmpeg", "opencv"]


def _decode(
    video_file: str | os.PathLike, method: str, sink_for: Callable[[], tuple[Sink, Callable[[], None]]]
) -> tuple[str, int, float]:
    """Try each decoder; ``sink_for()`` gives a fresh sink and an undo for a decoder that failed."""
    path = os.fspath(video_file)
    if not os.path.isfile(path):
        raise ValueError(f"{FIELD} {path!r} is not a file")
    failures = []
    for name in _decoders(path, method):
        sink, undo = sink_for()
        try:
            count, fps = DECODERS[name](path, sink)
        except (OSError, RuntimeError, ValueError, EOFError, StopIteration) as error:
            last_line = (str(error).strip().splitlines() or [""])[-1]  # ffmpeg ends with its verdict
            count, fps, reason = 0, 0.0, f"{type(error).__name__}: {last_line[-200:]}"
        else:
            reason = "no frames"
        if count > 0:
            if failures:
                log.warning("AnimateDiff: %s decoded %s after %s failed", name, path, "; ".join(failures))
            return name, count, fps
        undo()
        failures.append(f"{name}: {reason}")
    raise ValueError(f"{FIELD} {path!r} could not be decoded as a video ({'; '.join(failures)})")


def probe_video(video_file: str | os.PathLike, method: str = "auto") -> tuple[int, float]:
    """(frame count, fps) for the UI after upload: the count ``extract_frames`` will produce.

    It decodes the whole video (with the same decoders and options as extraction) because
    container metadata counts are estimates. GIF/WebP fps come from the frame durations, so they
    carry those formats' rounding (GIF stores hundredths of a second: 12 fps is stored as 80 ms).
    """
    _, count, fps = _decode(video_file, method, lambda: (None, lambda: None))
    return count, fps


def extract_frames(
    video_file: str | os.PathLike, folder: str | os.PathLike, method: str = "auto"
) -> VideoInfo:
    """Decode every frame of ``video_file`` into ``folder`` (created; must be empty) as PNGs.

    Names are the zero-based frame index padded to five digits (longer videos get longer names;
    natural sort keeps them in order). ``method`` "auto" tries Pillow (GIF/WebP only), ffmpeg,
    then OpenCV; naming one uses only that decoder. Unreadable videos raise ValueError naming
    ``video_source``.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"frames folder {str(out)!r} is not empty; extraction needs a fresh folder")
    written: list[str] = []
    sizes: list[tuple[int, int]] = []

    def sink_for() -> tuple[Sink, Callable[[], None]]:
        def sink(frame: Image.Image) -> None:
            name = str(out / f"{len(written):05d}.png")
            frame.save(name, compress_level=1)
            written.append(name)
            sizes.append(frame.size)

        def undo() -> None:
            for name in written:
                os.remove(name)
            written.clear()
            sizes.clear()

        return sink, undo

    decoder, count, fps = _decode(video_file, method, sink_for)
    log.info("AnimateDiff: %d frames at %.3g fps from %s (%s) into %s", count, fps, video_file, decoder, out)
    return VideoInfo(count, fps, sizes[0], out, tuple(written))


def new_frames_folder(root: str | os.PathLike, video_file: str | os.PathLike) -> Path:
    """A fresh ``<root>/<video stem>-<8 hex>`` path (not created) for one extraction."""
    return Path(root) / f"{Path(video_file).stem or 'video'}-{secrets.token_hex(4)}"


def decode_video_data(value: str, folder: str | os.PathLike) -> Path:
    """The video file that ``video_source`` names: a path as given, or base64 data written out.

    Accepts an existing file path (returned unchanged: check it with ``check_readable_path``),
    plain base64, or a ``data:video/...;base64,`` URL. Decoded data is written into ``folder``
    with the suffix of its container, found from its magic bytes (the declared MIME type is not
    trusted). Anything else raises ValueError naming ``video_source``.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{FIELD} is empty; give a video file path or base64 video data")
    text = value.strip()
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError(f"{FIELD} is a data URL without base64 data ({header[:60]!r}); use ';base64,'")
    elif os.path.isfile(text):
        return Path(text)
    payload = "".join(text.split())
    try:
        data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{FIELD} {text[:60]!r} is neither an existing file nor base64 video data") from None
    suffix = sniff_container(data[:64])
    if suffix is None:
        raise ValueError(
            f"{FIELD} holds {len(data)} bytes of base64 data that is not a video "
            f"(starts with {data[:12]!r}); allowed: MP4, MOV, WebM, MKV, AVI, GIF, WebP"
        )
    Path(folder).mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="video-", suffix=suffix, dir=folder)
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return Path(name)
