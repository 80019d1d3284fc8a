"""Put a soundtrack on a finished MP4 (AAC) or WebM (Opus), cut or padded to the video's length.

The video stream is copied untouched; the audio is encoded from the original file (its own
channels and rate), padded with silence when it is shorter than the video and cut where the
video ends (frames / fps), so the file plays exactly as long as the animation. The result is
written under a hidden temporary name and renamed into place: a failure never leaves a
half-written file, and muxing in place keeps the silent video when it fails. Imports nothing
from the WebUI.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .audio_decode import ALLOWED, FIELD, AudioSource, audio_input, ffmpeg_binary

# container suffix -> audio encoder options for ffmpeg
AUDIO_CODECS: dict[str, list[str]] = {
    ".mp4": ["-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart"],
    ".webm": ["-c:a", "libopus", "-b:a", "128k"],
}


def mux_audio(
    video: str | os.PathLike,
    audio: AudioSource,
    out: str | os.PathLike | None = None,
    *,
    fps: float,
    frames: int,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
) -> Path:
    """Write ``out`` (default: ``video`` itself) = the video plus ``audio`` trimmed/padded to
    ``frames / fps`` seconds; returns the written path.

    ``audio`` is what ``audio_decode.audio_input`` accepts (path, base64, data URL, bytes).
    Unreadable audio raises ``ValueError`` naming ``audio``; then ``out`` is not created (or,
    in place, the silent video is left as it was).
    """
    video, out = Path(video), Path(out if out is not None else video)
    options = AUDIO_CODECS.get(out.suffix.lower())
    if options is None:
        raise ValueError(f"can add audio to {', '.join(AUDIO_CODECS)} files only, not {out.name!r}")
    if not (fps > 0 and frames >= 1):
        raise ValueError(f"a video needs fps > 0 and frames >= 1, got fps={fps!r}, frames={frames!r}")
    if not video.is_file():
        raise ValueError(f"no video file at {video}")
    seconds = f"{frames / fps:.6f}"
    temp = out.with_name(f".{out.stem}.{secrets.token_hex(4)}.part{out.suffix}")
    with audio_input(audio, allowed_roots) as inp:
        command = [
            ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", "-y",
            "-i", f"file:{video.resolve()}", *inp.ffmpeg_args(),
            "-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "0", "-c:v", "copy",
            "-af", "apad", "-t", seconds, *options, str(temp),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True)
            if done.returncode != 0:
                raise _failure(done.stderr, inp)
            os.replace(temp, out)
        finally:
            temp.unlink(missing_ok=True)
    return out


def _failure(stderr: bytes, inp) -> Exception:
    """ValueError naming ``audio`` when the audio is what ffmpeg could not read, else RuntimeError."""
    reason = _last_line(stderr)
    check = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "error", *inp.ffmpeg_args(),
             "-map", "0:a:0", "-t", "1", "-f", "null", "-"]  # fmt: skip
    if subprocess.run(check, capture_output=True).returncode != 0:
        return ValueError(f"{FIELD} {inp.label} cannot be decoded ({reason}); allowed: {ALLOWED}")
    return RuntimeError(f"ffmpeg could not add the audio to the video: {reason}")


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "ffmpeg gave no reason"
