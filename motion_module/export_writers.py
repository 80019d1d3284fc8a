"""One writer per file format, all with the same calling convention, and the registry by format.

A writer gets a ``WriteJob`` (RGB frames of one size, export settings, infotext) and a path it
may create; it writes there or raises. It never picks names or renames: ``export.py`` gives it a
temporary path and publishes the result atomically. Missing encoders raise ``ExportError``
naming the format and the fix. Imports nothing from the WebUI; no pip installs here.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, features

from motion_module.audio_mux import mux_audio
from motion_module.params import ExportFormat, ExportParams

log = logging.getLogger("animatediff")

EXIF_IFD = 0x8769  # pointer to the Exif sub-IFD
USER_COMMENT = 0x9286  # Exif UserComment (WebUI reads infotext from here for JPEG/WebP)
GIF_DITHER = {"floyd-steinberg": Image.Dither.FLOYDSTEINBERG, "none": Image.Dither.NONE}
PALETTE_SAMPLE_PIXELS = 16384  # pixels drawn from all frames to build the one GIF palette
PALETTE_KMEANS_STEPS = 8


class ExportError(RuntimeError):
    """A format could not be written; the message names the format, the cause and the fix."""


@dataclass(frozen=True)
class WriteJob:
    """Everything a writer needs: frames are RGB and all the same size (checked by export.py)."""

    frames: Sequence[Image.Image]
    params: ExportParams
    info: str = ""
    # none: a static area keeps exactly its colour from frame to frame; floyd-steinberg: smoother
    # gradients in each still, at the price of dither patterns that crawl when played.
    gif_dither: str = "none"
    # A soundtrack for MP4 and WebM (path, base64 or data URL; see audio_mux), fitted to the
    # video's length; None writes them silent, exactly as before. Other formats ignore it.
    audio: str | os.PathLike | None = None

    @property
    def duration_ms(self) -> float:
        return 1000.0 / self.params.fps


Writer = Callable[[WriteJob, Path], None]


@dataclass(frozen=True)
class WriterSpec:
    write: Writer
    ext: str  # file suffix with the dot; "" for a folder
    is_folder: bool = False


# ---------------------------------------------------------------------------------------------
# GIF


def write_gif(job: WriteJob, path: Path) -> None:
    """Pillow GIF with a 256-colour palette per frame, or with ``gif_palette`` one for all frames."""
    quantize = global_palette_frames if job.params.gif_palette else per_frame_palette_frames
    frames = quantize(job.frames, job.gif_dither)
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=list(frames[1:]),
        duration=job.duration_ms,
        loop=job.params.loop_number,
        comment=job.info.encode("utf-8"),
        disposal=1,  # keep the previous frame: Pillow then stores only the changed region
    )
    if job.params.gifsicle:
        run_gifsicle(path)


def per_frame_palette_frames(frames: Sequence[Image.Image], dither: str) -> list[Image.Image]:
    """Each frame quantised to its own median-cut palette, built from a pixel sample of that frame.

    What Pillow does for RGB frames, but Pillow's median cut over every pixel costs about a
    second per 512×512 frame; a fixed-size sample gives nearly the same palette in a fraction.
    """
    _check_dither(dither)
    rng = np.random.default_rng(0)
    out = []
    for frame in frames:
        pixels = np.asarray(frame).reshape(-1, 3)  # (h, w, 3) -> (h·w, 3)
        sample = pixels[rng.choice(len(pixels), min(PALETTE_SAMPLE_PIXELS, len(pixels)), replace=False)]
        out.append(
            frame.quantize(palette=_palette_image(median_cut_palette(sample)), dither=GIF_DITHER[dither])
        )
    return out


def global_palette_frames(frames: Sequence[Image.Image], dither: str) -> list[Image.Image]:
    """Quantise every frame to one 256-colour palette built from a sample of all frames.

    Per-frame palettes (Pillow's default) let one colour drift from frame to frame (flicker in
    flat areas) and defeat the GIF's frame-difference compression; one palette keeps each colour
    stable. The palette is a median cut of a fixed-size random pixel sample from all frames,
    refined by a few k-means steps, so long videos cost the same to analyse.
    """
    _check_dither(dither)
    pixels = np.stack([np.asarray(f) for f in frames]).reshape(-1, 3)  # (f, h, w, 3) -> (f·h·w, 3)
    rng = np.random.default_rng(0)  # same frames, same palette
    sample = pixels[rng.choice(len(pixels), min(PALETTE_SAMPLE_PIXELS, len(pixels)), replace=False)]
    palette = _palette_image(refine_palette(sample.astype(np.float32), median_cut_palette(sample)))
    return [f.quantize(palette=palette, dither=GIF_DITHER[dither]) for f in frames]


def _check_dither(dither: str) -> None:
    if dither not in GIF_DITHER:
        raise ExportError(f"GIF: unknown dither {dither!r}; allowed: {', '.join(GIF_DITHER)}")


def _palette_image(centres: np.ndarray) -> Image.Image:
    image = Image.new("P", (1, 1))
    image.putpalette(np.clip(centres + 0.5, 0, 255).astype(np.uint8).ravel().tolist())
    return image


def median_cut_palette(sample: np.ndarray) -> np.ndarray:
    """Pillow's median cut over the sample pixels: (n, 3) uint8 -> (k, 3) float32, k <= 256."""
    side = int(np.ceil(np.sqrt(len(sample))))
    square = np.concatenate([sample, np.repeat(sample[-1:], side * side - len(sample), 0)])
    quantized = Image.fromarray(square.reshape(side, side, 3)).quantize(256, method=Image.Quantize.MEDIANCUT)
    used = sorted(index for _, index in quantized.getcolors(256))  # fewer than 256 for flat frames
    return np.asarray(quantized.getpalette(), np.float32).reshape(-1, 3)[used]


def refine_palette(sample: np.ndarray, centres: np.ndarray, steps: int = PALETTE_KMEANS_STEPS) -> np.ndarray:
    """Lloyd (k-means) steps: move each palette colour to the mean of the pixels nearest to it."""
    k = len(centres)
    for _ in range(steps):
        distance = (centres**2).sum(1)[None] - 2 * sample @ centres.T  # (n, k), up to a per-row constant
        nearest = distance.argmin(1)
        count = np.bincount(nearest, minlength=k)
        sums = np.stack([np.bincount(nearest, weights=sample[:, c], minlength=k) for c in range(3)], 1)
        centres = np.where(count[:, None] > 0, sums / np.maximum(count, 1)[:, None], centres)
        centres = centres.astype(np.float32)
    return centres


def run_gifsicle(path: Path) -> None:
    """Optimise the GIF in place with gifsicle when it is installed; say so when it is not."""
    exe = shutil.which("gifsicle")
    if exe is None:
        log.warning(
            "AnimateDiff: gifsicle is not on PATH, so the GIF was written without the gifsicle pass "
            "(install gifsicle, e.g. `apt install gifsicle`, or turn the gifsicle setting off)"
        )
        return
    done = subprocess.run([exe, "-O3", "-b", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"GIF: gifsicle failed (exit {done.returncode}): {done.stderr.strip()}")


# ---------------------------------------------------------------------------------------------
# MP4 / WebM through the ffmpeg binary that imageio-ffmpeg ships


def write_mp4(job: WriteJob, path: Path) -> None:
    """H.264 in yuv420p (plays everywhere); CRF/preset/tune from the settings."""
    p = job.params
    if not 0 <= p.mp4_crf <= 51:
        raise ExportError(f"MP4: CRF {p.mp4_crf} is outside 0-51 (lower is better, 23 is the default)")
    options = ["-crf", str(p.mp4_crf), "-movflags", "+faststart"]
    options += ["-preset", p.mp4_preset] if p.mp4_preset else []
    options += ["-tune", p.mp4_tune] if p.mp4_tune else []
    options += ["-metadata", f"comment={job.info}"]
    _with_soundtrack(job, path, "MP4", lambda target: _ffmpeg_write(job, target, "MP4", "libx264", options))


def write_webm(job: WriteJob, path: Path) -> None:
    """VP9 at constant quality (CRF 32); row threading keeps CPU encoding quick."""
    options = ["-crf", "32", "-b:v", "0", "-deadline", "good", "-cpu-used", "5", "-row-mt", "1"]
    metadata = ["-metadata", f"title={job.info}", "-metadata", f"comment={job.info}"]
    _with_soundtrack(
        job, path, "WEBM", lambda target: _ffmpeg_write(job, target, "WEBM", "libvpx-vp9", options + metadata)
    )


def _with_soundtrack(job: WriteJob, path: Path, name: str, write_video: Callable[[Path], None]) -> None:
    """``write_video(path)``; with ``job.audio``, write it silent beside ``path`` and mux into ``path``."""
    if job.audio is None:
        write_video(path)
        return
    silent = path.with_name(f"{path.stem}.silent{path.suffix}")
    try:
        write_video(silent)
        mux_audio(silent, job.audio, path, fps=job.params.fps, frames=len(job.frames))
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"{name}: {e}") from e
    finally:
        silent.unlink(missing_ok=True)


def _ffmpeg_write(job: WriteJob, path: Path, name: str, codec: str, options: list[str]) -> None:
    exe = ffmpeg_exe(name)
    if codec not in ffmpeg_encoders(exe):
        raise ExportError(
            f"{name}: the ffmpeg at {exe} has no {codec} encoder; install an ffmpeg build with it"
        )
    import imageio_ffmpeg

    frames = [pad_to_even(np.asarray(f)) for f in job.frames]  # yuv420p needs even sizes
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=job.params.fps,
        codec=codec,
        quality=None,
        macro_block_size=1,  # we padded to even; never let ffmpeg rescale
        ffmpeg_log_level="error",
        output_params=options,
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column when a side is odd: (h, w, 3) -> (h + h%2, w + w%2, 3)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


def ffmpeg_exe(name: str) -> str:
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ExportError(
            f"{name}: needs the imageio-ffmpeg package ({e}); pip install imageio-ffmpeg"
        ) from e
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise ExportError(f"{name}: no ffmpeg binary found ({e}); pip install imageio-ffmpeg") from e


@functools.lru_cache(maxsize=4)
def ffmpeg_encoders(exe: str) -> frozenset[str]:
    """Encoder names a given ffmpeg binary offers (a fact about the binary, so cached)."""
    listing = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return frozenset(
        line.split()[1] for line in listing.splitlines() if line.startswith(" ") and len(line.split()) > 1
    )


# ---------------------------------------------------------------------------------------------
# WebP, PNG frames, TXT


def write_webp(job: WriteJob, path: Path) -> None:
    """Animated WebP; the infotext goes into Exif UserComment, where the WebUI's PNG Info reads it."""
    if not features.check("webp"):
        raise ExportError(
            "WEBP: this Pillow was built without WebP support; install a Pillow wheel with libwebp"
        )
    job.frames[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=list(job.frames[1:]),
        duration=int(job.duration_ms),
        loop=job.params.loop_number,
        quality=job.params.webp_quality,
        lossless=job.params.webp_lossless,
        exif=exif_user_comment(job.info),
    )


def exif_user_comment(text: str) -> bytes:
    """A minimal Exif block holding only UserComment (type UNDEFINED, "UNICODE" + UTF-16BE).

    Written by hand because Pillow stores this tag as BYTE, while readers (piexif, the WebUI's
    PNG Info tab) expect UNDEFINED. Layout: TIFF header, IFD0 with the Exif-IFD pointer, the Exif
    IFD with one entry, then the comment bytes.
    """
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    header = b"MM\x00\x2a" + struct.pack(">I", 8)
    ifd0 = struct.pack(">HHHII", 1, EXIF_IFD, 4, 1, 26) + struct.pack(">I", 0)  # bytes 8..26
    exif_ifd = struct.pack(">HHHII", 1, USER_COMMENT, 7, len(comment), 44) + struct.pack(">I", 0)  # 26..44
    return b"Exif\x00\x00" + header + ifd0 + exif_ifd + comment


def write_png_frames(job: WriteJob, folder: Path) -> None:
    """A folder of 00000.png, 00001.png, ... each carrying the infotext in its ``parameters`` chunk."""
    folder.mkdir()
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", job.info)
    for i, frame in enumerate(job.frames):
        frame.save(folder / f"{i:05d}.png", format="PNG", pnginfo=text, compress_level=4)


def write_txt(job: WriteJob, path: Path) -> None:
    path.write_text(job.info + "\n", encoding="utf-8")


WRITERS: dict[ExportFormat, WriterSpec] = {
    ExportFormat.GIF: WriterSpec(write_gif, ".gif"),
    ExportFormat.MP4: WriterSpec(write_mp4, ".mp4"),
    ExportFormat.WEBP: WriterSpec(write_webp, ".webp"),
    ExportFormat.WEBM: WriterSpec(write_webm, ".webm"),
    ExportFormat.PNG: WriterSpec(write_png_frames, "", is_folder=True),
    ExportFormat.TXT: WriterSpec(write_txt, ".txt"),
}
