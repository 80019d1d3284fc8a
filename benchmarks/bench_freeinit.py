"""FreeInit cost: time per FreeInit iteration relative to one normal sampling run (target ≤ 1.05×).

An Euler sampler (tests/toy_sampling.py) runs through the windowed denoiser on the tiny ldm SD1.5
UNet with a fabricated v3 motion module injected. For each video size it times one plain sampling
run, then FreeInit with ``--iters`` iterations (same steps each), and reports the time per
iteration over the plain run; the difference is FreeInit's own work (mask, FFT mix, re-noising),
also timed alone. The last column is coarse-to-fine sampling's total over ``iters`` plain runs.
Times are CPU seconds of this single-threaded process (time.process_time), best of ``--repeat``.

    python benchmarks/bench_freeinit.py [--frames 16 24] [--sizes 8 16] [--steps 4] [--iters 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factories import make_mm_state_dict, make_sd15_unet  # noqa: E402
from toy_sampling import euler_sampler  # noqa: E402

from motion_module.detect import detect  # noqa: E402
from motion_module.frames import FrameLayout  # noqa: E402
from motion_module.freeinit import free_init, low_pass_filter, reinit_noise, sigma_of  # noqa: E402
from motion_module.injection import inject  # noqa: E402
from motion_module.loading import build_module  # noqa: E402
from motion_module.params import WindowParams  # noqa: E402
from motion_module.spec import SPECS, Family, alphas_cumprod  # noqa: E402
from motion_module.windows import schedule  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def row(sample, frames: int, size: int, window: WindowParams, sigma: float, args) -> str:
    """One table row: plain run, FreeInit per iteration, re-init alone, coarse-to-fine total."""
    noise = torch.randn(frames, 4, size, size, generator=torch.Generator().manual_seed(1))
    mask = low_pass_filter(frames, size, size)
    sample(noise, 1)  # warm up kernels for this shape

    def run_free_init(coarse_to_fine: bool) -> torch.Tensor:
        return free_init(
            sample,
            noise,
            mask,
            iterations=args.iters,
            steps=args.steps,
            sigma=sigma,
            coarse_to_fine=coarse_to_fine,
        )

    def reinit_20() -> None:
        for _ in range(20):  # mask built each time too: the adapter may build it once per job
            reinit_noise(z0, noise, noise, low_pass_filter(frames, size, size), sigma=sigma)

    plain = best(lambda: sample(noise, args.steps), args.repeat)
    total = best(lambda: run_free_init(False), args.repeat)
    fast = best(lambda: run_free_init(True), args.repeat)
    z0 = sample(noise, 1)
    reinit = best(reinit_20, args.repeat) / 20
    windows = len(schedule(frames, 0, window))
    per_iter = total / args.iters
    return (
        f"| {frames} | {size}x{size} | {windows} | {plain:.3f} | {per_iter:.3f} | "
        f"{per_iter / plain:.3f} | {reinit * 1000:.2f} | {fast / (args.iters * plain):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 24])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="latent height/width")
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    unet = make_sd15_unet()
    model = build_module(detect(make_mm_state_dict(Family.V3), ""), "cpu", torch.float32)
    layout = FrameLayout()
    handle = inject(unet, model, layout, "sd15")
    alphas = alphas_cumprod(SPECS[Family.V3])
    sigma = sigma_of(alphas[-1])
    window = WindowParams(context=args.context)

    print(
        f"FreeInit, {args.iters} iterations x {args.steps} Euler steps, context {args.context}, "
        f"{args.threads} thread(s), best of {args.repeat}\n"
    )
    print(
        "| frames | latent | windows/step | plain run s | FreeInit s/iteration | ratio | "
        "re-init ms | coarse-to-fine total / (iters x plain) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for frames in args.frames:
            context = torch.randn(1, 7, 64, generator=torch.Generator().manual_seed(0)).expand(frames, -1, -1)
            sample = euler_sampler(unet, layout, window, frames, context, alphas)
            for size in args.sizes:
                print(row(sample, frames, size, window, sigma, args))
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
