"""Export cost per format: time and file size for 64 frames at 512×512, plus GIF quality.

Compares Pillow's default GIF (one adaptive palette per frame) with our palette-optimised GIF
(one palette for the whole video) on size, PSNR against the source frames, and colour flicker
(how much a static region changes between frames). Run: ``python benchmarks/bench_export.py``.
The frames are synthetic but picture-like: a smooth lit background with a fixed fine texture
(static between frames, as a generated scene's background is) and moving soft shapes, so neither
GIF variant gets an unrealistically easy or hard input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motion_module.export import export_video  # noqa: E402
from motion_module.interpolation import interpolate  # noqa: E402
from motion_module.params import ExportFormat, ExportParams  # noqa: E402

F = ExportFormat


def scene(frames: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    texture = rng.normal(0, 3.0, (size, size, 3))  # the same in every frame
    out = []
    for t in range(frames):
        phase = 2 * np.pi * t / frames
        sky = np.stack([0.35 + 0.4 * yy, 0.55 + 0.3 * yy, 0.9 - 0.2 * yy], -1)  # static top-down gradient
        image = sky.copy()
        for k, colour in enumerate(([0.9, 0.4, 0.2], [0.2, 0.7, 0.3], [0.8, 0.8, 0.3])):
            cx = 0.5 + 0.3 * np.cos(phase + 2 * k)
            cy = 0.5 + 0.25 * np.sin(phase * (k + 1) / 2 + k)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.01 * k))[..., None]
            image = image * (1 - blob) + blob * np.asarray(colour) * (0.8 + 0.2 * yy[..., None])
        image = image * 255 + texture
        out.append(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)))
    return out


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def gif_quality(path: Path, source: list[Image.Image]) -> tuple[float, float]:
    """(mean PSNR, flicker). Flicker: mean |frame t - frame t-1| over the pixels that are
    identical in the source frames t-1 and t, so every change there comes from the encoding."""
    decoded = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            decoded.append(np.asarray(im.convert("RGB"), np.float64))
    src = [np.asarray(s, np.float64) for s in source]
    scores = [psnr(d, s) for d, s in zip(decoded, src, strict=True)]
    changes = []
    for t in range(1, len(src)):
        static = (src[t] == src[t - 1]).all(-1)
        changes.append(np.abs(decoded[t] - decoded[t - 1])[static].mean())
    return float(np.mean(scores)), float(np.mean(changes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    frames = scene(args.frames, args.size)
    day = datetime(2024, 1, 1)
    rows = []
    cases = [
        ("GIF (ours, palette per frame)", ExportParams(formats=(F.GIF,))),
        ("GIF (ours, one palette, no dither)", ExportParams(formats=(F.GIF,), gif_palette=True)),
        ("GIF (ours, one palette, Floyd-Steinberg)", ExportParams(formats=(F.GIF,), gif_palette=True)),
        ("MP4 (H.264 CRF 23)", ExportParams(formats=(F.MP4,))),
        ("WEBM (VP9 CRF 32)", ExportParams(formats=(F.WEBM,))),
        ("WEBP (quality 80)", ExportParams(formats=(F.WEBP,))),
        ("WEBP (lossless)", ExportParams(formats=(F.WEBP,), webp_lossless=True)),
        ("PNG frames", ExportParams(formats=(F.PNG,))),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "pillow.gif"
        start = time.perf_counter()
        frames[0].save(plain, save_all=True, append_images=frames[1:], duration=1000 / 8, loop=0)
        rows.append(("GIF (plain Pillow, RGB frames)", time.perf_counter() - start, plain.stat().st_size,
                     gif_quality(plain, frames)))  # fmt: skip
        for i, (label, params) in enumerate(cases):
            dither = "floyd-steinberg" if "Floyd" in label else "none"
            start = time.perf_counter()
            result = export_video(
                frames, params, Path(tmp) / str(i), 1, info="bench", now=day, gif_dither=dither
            )
            seconds = time.perf_counter() - start
            assert result.ok, result.errors
            path = next(iter(result.paths.values()))
            size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
            quality = gif_quality(path, frames) if params.formats == (F.GIF,) else None
            rows.append((label, seconds, size, quality))
    start = time.perf_counter()
    interpolated = interpolate(frames[:16], 4)
    interp_seconds = time.perf_counter() - start
    print(f"{args.frames} frames at {args.size}x{args.size}\n")
    print("| format | time (s) | size (KiB) | PSNR (dB) | flicker |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, size, quality in rows:
        extra = f"{quality[0]:.1f} | {quality[1]:.2f}" if quality else "- | -"
        print(f"| {label} | {seconds:.2f} | {size / 1024:.0f} | {extra} |")
    print(
        f"\nOptical-flow interpolation, X=4: 16 -> {len(interpolated)} frames in {interp_seconds:.2f} s "
        f"({interp_seconds / 15:.2f} s per frame pair)"
    )


if __name__ == "__main__":
    main()
