"""Window sampling cost: UNet calls, frame evaluations, wall time and peak memory per denoise step.

Runs one cond+uncond denoiser step through ``WindowedDenoiser`` on the tiny ldm SD1.5 UNet with a
fabricated v3 motion module injected (tests/factories.py), for several video lengths, overlaps,
window batching on/off and motion-module-window mode. Prints a markdown table and the checks the
issue sets: calls = ceil(windows / windows per call), time linear in frames, and motion-module
windows >= 1.5x faster than full-UNet windows at 64 frames, overlap 8. Times are CPU seconds of
this single-threaded process (time.process_time), which other jobs on a shared machine disturb far
less than wall time; on an idle machine the two agree.

    python benchmarks/bench_windows.py [--frames 16 32 64 128] [--size 8] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories import make_mm_state_dict, make_sd15_unet  # noqa: E402

from motion_module.detect import detect  # noqa: E402
from motion_module.frames import FrameLayout  # noqa: E402
from motion_module.injection import inject  # noqa: E402
from motion_module.loading import build_module  # noqa: E402
from motion_module.params import WindowMode, WindowParams  # noqa: E402
from motion_module.spec import Family  # noqa: E402
from motion_module.windows import WindowedDenoiser, schedule  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the resident set every 2 ms; torch's CPU allocations are invisible to tracemalloc."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--overlaps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--size", type=int, default=8, help="latent height/width")
    parser.add_argument("--budget", type=int, default=64, help="frame budget when batching is on")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--compare-sizes",
        type=int,
        nargs="*",
        default=[16],
        help="latent sizes for the 64-frame, overlap-8 mode comparison (spatial cost grows with size)",
    )
    parser.add_argument("--memory", action="store_true", help="measure peak memory only (run by main)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = steadier timings)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    unet = make_sd15_unet()
    model = build_module(detect(make_mm_state_dict(Family.V3), ""), "cpu", torch.float32)
    layout = FrameLayout()
    handle = inject(unet, model, layout, "sd15")

    def inner(x, sigma, cond):
        return unet(x, timesteps=sigma, context=cond["c_crossattn"][0])

    configs = [
        ("UNet windows, 1 per call", WindowMode.UNET, 0),
        (f"UNet windows, budget {args.budget}", WindowMode.UNET, args.budget),
        ("motion-module windows", WindowMode.MOTION_MODULE, args.budget),
    ]
    rows, times = [], {}
    if args.memory:
        print("| frames | overlap | mode | peak MiB above baseline |\n|---:|---:|---|---:|")
    else:
        print(
            "| frames | overlap | mode | windows | UNet calls | expected calls | frame evals | CPU s | ms/frame |"
        )
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    try:
        with torch.no_grad():
            # warm up kernels once so the first row is not charged for it
            x, t, cond = inputs(16, args.size)
            WindowedDenoiser(inner, WindowParams(), layout, 16)(x, t, cond=cond)
            for overlap in args.overlaps:
                for frames in args.frames:
                    x, t, cond = inputs(frames, args.size)
                    for label, mode, budget in configs:
                        params = WindowParams(context=16, overlap=overlap, frame_budget=budget, mode=mode)
                        windows = schedule(frames, 1, params)
                        best = math.inf
                        for _ in range(args.repeat):
                            denoiser = WindowedDenoiser(inner, params, layout, frames, step=lambda: 1)
                            with PeakRSS() if args.memory else contextlib.nullcontext() as memory:
                                start = time.process_time()
                                denoiser(x, t, cond=cond)
                                best = min(best, time.process_time() - start)
                        expected = expected_calls(windows, frames, params)
                        times[(overlap, frames, label)] = best
                        rows.append((frames, overlap, label, denoiser.calls, expected))
                        if args.memory:
                            print(f"| {frames} | {overlap} | {label} | {memory.mib:.0f} |", flush=True)
                            continue
                        print(
                            f"| {frames} | {overlap} | {label} | {len(windows)} | {denoiser.calls} | {expected} | "
                            f"{denoiser.frame_evals} | {best:.2f} | {1000 * best / frames:.0f} |",
                            flush=True,
                        )
        if args.memory:
            return
        with torch.no_grad():
            comparison = [(size, compare_modes(inner, layout, configs, size)) for size in args.compare_sizes]
    finally:
        handle.remove()

    print()
    assert all(calls == expected for *_, calls, expected in rows), "UNet calls differ from the expected count"
    print("calls per step == ceil(windows / windows per call): yes")
    for overlap in args.overlaps:
        for label, *_ in configs:
            per_frame = [times[(overlap, f, label)] / f for f in args.frames if f > 16]
            if per_frame:
                print(
                    f"overlap {overlap}, {label}: time per frame (frames > context) {', '.join(f'{1000 * v:.0f}' for v in per_frame)} ms"
                )
    if 64 in args.frames and 8 in args.overlaps:
        unet_time = times[(8, 64, configs[0][0])]
        mm_time = times[(8, 64, configs[2][0])]
        print(
            f"64 frames, overlap 8: motion-module windows {unet_time / mm_time:.2f}x faster than full-UNet windows (1 per call)"
        )
        print(
            f"64 frames, overlap 8: motion-module windows {times[(8, 64, configs[1][0])] / mm_time:.2f}x faster than batched full-UNet windows"
        )
    for size, seconds in comparison:
        mm_time = seconds[-1]
        print(
            f"latent {size}x{size}, 64 frames, overlap 8: "
            + ", ".join(f"{label} {t:.2f} s" for (label, *_), t in zip(configs, seconds, strict=True))
            + f"; motion-module windows {seconds[0] / mm_time:.2f}x / {seconds[1] / mm_time:.2f}x faster"
        )
    print("\nPeak memory per step (separate process: glibc told to return freed tensors at once)\n")
    sys.stdout.flush()
    memory_args = [
        "--memory",
        "--frames",
        *map(str, args.frames),
        "--overlaps",
        "8",
        "--size",
        str(args.size),
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    subprocess.run(
        [sys.executable, __file__, *memory_args, "--budget", str(args.budget)], env=env, check=True
    )


def compare_modes(inner, layout: FrameLayout, configs, size: int) -> list[float]:
    """Seconds per step of each config at 64 frames, overlap 8, for a larger latent."""
    x, t, cond = inputs(64, size)
    seconds = []
    for _, mode, budget in configs:
        params = WindowParams(context=16, overlap=8, frame_budget=budget, mode=mode)
        denoiser = WindowedDenoiser(inner, params, layout, 64, step=lambda: 1)
        start = time.process_time()
        denoiser(x, t, cond=cond)
        seconds.append(time.process_time() - start)
    return seconds


def expected_calls(windows, frames: int, params: WindowParams) -> int:
    if len(windows) == 1 and windows[0] == tuple(range(frames)) or params.mode == WindowMode.MOTION_MODULE:
        return 1
    per_call = max(1, params.frame_budget // params.context) if params.frame_budget else 1
    return math.ceil(len(windows) / per_call)


def inputs(frames: int, size: int):
    gen = torch.Generator().manual_seed(frames)
    rows = 2 * frames  # cond block + uncond block
    x = torch.randn(rows, 4, size, size, generator=gen)
    t = torch.full((rows,), 500, dtype=torch.long)
    cond = {"c_crossattn": [torch.randn(rows, 7, 64, generator=gen)]}
    return x, t, cond


if __name__ == "__main__":
    main()
