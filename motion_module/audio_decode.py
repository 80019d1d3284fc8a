"""Audio from the request (a file path, base64 data or a data URL) -> mono float32 samples.

Decoding runs the ffmpeg binary that imageio-ffmpeg ships, so WAV, MP3, FLAC, Ogg (Vorbis/Opus),
M4A/AAC and WebM audio all work with no extra Python package. The container is recognised from
the file's first bytes, not its name, and ffmpeg is told that demuxer and may open local files
only: a request cannot make it read a playlist or a URL. Anything unreadable is refused with a
``ValueError`` naming the ``audio`` field. Imports nothing from the WebUI.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIELD = "audio"
DEFAULT_RATE = 22050  # analysis rate: onsets and loudness need nothing above 11 kHz
MAX_AUDIO_DATA = 256 * 1024 * 1024  # base64 text of an audio file sent through the API
ALLOWED = "a WAV, MP3, FLAC, Ogg, M4A/AAC, AIFF or WebM audio file, as a path, base64 data or a data URL"

AudioSource = str | bytes | os.PathLike


@dataclass(frozen=True)
class Audio:
    """Decoded audio: ``samples`` (n,) float32 mono at ``rate`` samples per second."""

    samples: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


@dataclass(frozen=True)
class AudioInput:
    """A readable audio file and the ffmpeg demuxer its first bytes call for."""

    path: Path
    demuxer: str
    label: str  # how error messages name the source

    def ffmpeg_args(self) -> list[str]:
        """The input options for ffmpeg: local files only, the sniffed demuxer, no protocol guessing."""
        return ["-protocol_whitelist", "file", "-f", self.demuxer, "-i", f"file:{self.path}"]


def sniff_audio(head: bytes) -> str | None:
    """ffmpeg demuxer for the audio container whose magic bytes start ``head``; None if unknown."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":  # MP4 family: M4A, MP4 with sound
        return "mov"
    if head[:4] == b"\x1aE\xdf\xa3":  # EBML: WebM / Matroska
        return "matroska"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS sync, layer 00: raw AAC
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame sync, layer I-III
            return "mp3"
    return None


@contextlib.contextmanager
def audio_input(
    source: AudioSource, allowed_roots: Sequence[str | os.PathLike] | None = None
) -> Iterator[AudioInput]:
    """The audio as a file ffmpeg can read; base64 data is written to a temporary file, removed after.

    ``source``: a path (str or PathLike), base64 text, a ``data:audio/...;base64,`` URL, or raw
    bytes. ``allowed_roots`` None reads any path; otherwise the resolved path must lie inside one
    of them (checked before existence, so a refused path does not reveal whether it exists).
    """
    data = _inline_data(source)
    if data is None:
        yield _path_input(source, allowed_roots)
        return
    demuxer = sniff_audio(data[:64])
    label = f"base64 data ({len(data)} bytes)"
    if demuxer is None:
        raise ValueError(
            f"{FIELD}: {label} is not audio (unknown file header {data[:8]!r}); allowed: {ALLOWED}"
        )
    handle, name = tempfile.mkstemp(prefix="animatediff-audio-", suffix=".bin")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        yield AudioInput(Path(name), demuxer, label)
    finally:
        Path(name).unlink(missing_ok=True)


def _inline_data(source: AudioSource) -> bytes | None:
    """The bytes of base64 text, a data URL or raw bytes; None when ``source`` is a path."""
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, os.PathLike):
        return None
    if not isinstance(source, str):
        raise ValueError(
            f"{FIELD} must be a path or base64 text, got {type(source).__name__}; allowed: {ALLOWED}"
        )
    text = source.strip()
    if len(text) > MAX_AUDIO_DATA:
        raise ValueError(f"{FIELD} holds {len(text)} characters; at most {MAX_AUDIO_DATA} are accepted")
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError(f"{FIELD} is a data URL without base64 data ({header[:60]!r}); use ';base64,'")
        return _b64(payload, strict=True)
    data = _b64(text, strict=False)
    return data if data is not None and sniff_audio(data[:64]) else None


def _b64(text: str, strict: bool) -> bytes | None:
    payload = "".join(text.split())
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        if strict:
            raise ValueError(
                f"{FIELD}: the data URL's payload is not valid base64; allowed: {ALLOWED}"
            ) from None
        return None


def _path_input(source: str | os.PathLike, allowed_roots) -> AudioInput:
    text = os.fspath(source).strip()
    if not text:
        raise ValueError(f"{FIELD} is empty; allowed: {ALLOWED}")
    try:
        resolved = Path(text).resolve()
    except (OSError, RuntimeError) as error:
        raise ValueError(f"{FIELD} {text[:200]!r} cannot be resolved: {error}") from error
    if allowed_roots is not None and not any(
        resolved.is_relative_to(Path(r).resolve()) for r in allowed_roots
    ):
        roots = ", ".join(repr(str(r)) for r in allowed_roots) or "none"
        raise ValueError(f"{FIELD} {text!r} is outside the folders this WebUI may read from ({roots})")
    if not resolved.is_file():
        raise ValueError(
            f"{FIELD} {text[:200]!r} is neither an existing file nor base64 audio data; allowed: {ALLOWED}"
        )
    with open(resolved, "rb") as file:
        head = file.read(64)
    demuxer = sniff_audio(head)
    if demuxer is None:
        raise ValueError(
            f"{FIELD} {text!r} is not audio (unknown file header {head[:8]!r}); allowed: {ALLOWED}"
        )
    return AudioInput(resolved, demuxer, repr(text))


def ffmpeg_binary() -> str:
    """The ffmpeg executable bundled with imageio-ffmpeg (a declared dependency)."""
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise RuntimeError(f"audio needs the imageio-ffmpeg package ({e}); pip install imageio-ffmpeg") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def load_audio(
    source: AudioSource,
    rate: int = DEFAULT_RATE,
    *,
    seconds: float | None = None,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
) -> Audio:
    """Decode the first audio stream to mono float32 at ``rate`` Hz (ffmpeg's standard downmix,
    whose level may exceed ±1; analysis normalises, so only relative loudness matters).

    ``seconds`` decodes only that much from the start (e.g. the video's duration), which keeps
    an hour-long file from filling memory. Unreadable audio, or a file with no samples, raises
    ``ValueError`` naming ``audio``.
    """
    if not isinstance(rate, int) or rate < 1000:
        raise ValueError(f"audio sample rate must be a whole number >= 1000 Hz, got {rate!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"audio: seconds to decode must be > 0, got {seconds!r}")
    with audio_input(source, allowed_roots) as inp:
        limit = ["-t", f"{seconds:.6f}"] if seconds is not None else []
        command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", *inp.ffmpeg_args(),
                   *limit, "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", "pipe:1"]  # fmt: skip
        done = subprocess.run(command, capture_output=True)
    if done.returncode != 0:
        raise ValueError(
            f"{FIELD} {inp.label} cannot be decoded ({_last_line(done.stderr)}); allowed: {ALLOWED}"
        )
    samples = np.frombuffer(done.stdout[: len(done.stdout) // 4 * 4], dtype="<f4").astype(np.float32)
    if not len(samples):
        raise ValueError(f"{FIELD} {inp.label} holds no audio samples; allowed: {ALLOWED}")
    return Audio(samples, rate)


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "ffmpeg gave no reason"
