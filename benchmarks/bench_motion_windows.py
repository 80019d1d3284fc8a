"""The motion module's temporal pass over context windows: windows cut from each site's token
sequences (what the default window mode runs) against the whole site run per window and fused.

Every site of a v3-layout module at SD1.5's widths (320, 640, 1280, 1280; random weights cost the
same FLOPs as trained ones) gets cond + uncond rows of an F-frame video at its UNet level's
resolution, in windows of 16 with overlap 8 (each frame in about 1.75 windows). The token path does
proj_in, the first attention's q/k/v and proj_out once per frame; the per-window path once per
window holding the frame. Times are CPU seconds of this process (time.process_time), the two paths
alternated, minimum of ``--repeat`` rounds after a warm-up; compare only the ratios of one run.

    python benchmarks/bench_motion_windows.py [--frames 16 64 128] [--latent 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories import make_mm_state_dict  # noqa: E402
from sd15_flops import site_size  # noqa: E402

from motion_module.detect import detect  # noqa: E402
from motion_module.frames import TemporalWindows  # noqa: E402
from motion_module.loading import build_module  # noqa: E402
from motion_module.params import WindowMode, WindowParams  # noqa: E402
from motion_module.window_schedule import schedule  # noqa: E402

WIDTHS = (320, 640, 1280, 1280)


def site_inputs(model, frames: int, latent: int) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Each site with a (2·frames, c, h, w) input at its level's size (halved per level down)."""
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for prefix, site in model.site_modules().items():
        size = site_size(prefix, len(WIDTHS), latent)
        pairs.append((site, torch.randn(2 * frames, site.channels, size, size, generator=gen)))
    return pairs


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--latent", type=int, default=8, help="latent height/width at the top level")
    parser.add_argument("--budget", type=int, default=32, help="frame budget (frames per call)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    found = detect(make_mm_state_dict("v3", widths=WIDTHS), "v3")
    model = build_module(found, "cpu", torch.float32)
    print(
        "| frames | windows (frames in them) | per window s | from tokens s | ratio | max |Δ| / max |out| |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for frames in args.frames:
        params = WindowParams(context=16, overlap=8, frame_budget=args.budget, mode=WindowMode.MOTION_MODULE)
        windows = TemporalWindows(tuple(schedule(frames, 0, params)), params.fusion, args.budget)
        pairs = site_inputs(model, frames, args.latent)

        def tokens(pairs=pairs, windows=windows, frames=frames):
            return [site(x, frames, None, windows) for site, x in pairs]

        def per_window(pairs=pairs, windows=windows, frames=frames):
            return [windows.run(functools.partial(site), x, frames) for site, x in pairs]

        with torch.no_grad():
            ours, theirs = tokens(), per_window()  # warm-up, and the agreement check
            error = max(
                (a - b).abs().max().item() / b.abs().max().item() for a, b in zip(ours, theirs, strict=True)
            )
            times = {"tokens": [], "per window": []}
            for _ in range(args.repeat):
                times["per window"].append(timed(per_window))
                times["tokens"].append(timed(tokens))
        slow, fast = min(times["per window"]), min(times["tokens"])
        in_windows = sum(len(w) for w in windows.windows)
        print(
            f"| {frames} | {len(windows.windows)} ({in_windows}) | {slow:.3f} | {fast:.3f} | "
            f"{slow / fast:.2f} | {error:.1e} |"
        )
    print(
        f"\nv3 layout at widths {WIDTHS}, top latent {args.latent}², cond + uncond, context 16 overlap 8, "
        f"frame budget {args.budget}; torch {torch.__version__}, {args.threads} thread(s), "
        f"min of {args.repeat} alternated rounds"
    )


if __name__ == "__main__":
    main()
