"""UNet forward time and peak memory with and without an injected motion module (SD1.5 and SDXL
layouts), beside the predicted FLOP ratio.

Prediction: each site costs B·F·H·W·(44·C² + 8·F·C) matmul FLOPs (44·C² per token for proj_in,
q/k/v/out of both attention blocks, the GEGLU feed-forward and proj_out; 8·F·C for QKᵀ and AV); the
plain UNet's matmul/conv FLOPs are counted with FlopCounterMode. If the module adds no hidden
cost, time(with) / time(without) ≈ 1 + MM FLOPs / UNet FLOPs. Run: python benchmarks/bench_motion_module.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_controlnet import reset_hwm, status_kib  # noqa: E402
from factories import make_mm_state_dict, make_sd15_unet, make_sdxl_unet, unet_inputs  # noqa: E402

from motion_module.detect import detect  # noqa: E402
from motion_module.frames import FrameLayout  # noqa: E402
from motion_module.injection import MotionBlock, inject  # noqa: E402
from motion_module.loading import build_module  # noqa: E402


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def predicted_mm_flops(unet: torch.nn.Module, layout: FrameLayout, run) -> tuple[int, int]:
    """Sum the per-site formula above over the sites actually hit, with their real (rows, c, h, w).

    Returns (total, attention part): FlopCounterMode does not count CPU SDPA kernels, so the
    counted difference is compared with total - attention.
    """
    total = attention = 0

    def hook(module, inputs, _output):
        nonlocal total, attention
        rows, c, h, w = inputs[0].shape
        total += rows * h * w * (44 * c * c + 8 * layout.frames * c)
        attention += rows * h * w * 8 * layout.frames * c

    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, MotionBlock)]
    run()
    for handle in handles:
        handle.remove()
    return total, attention


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measured_peak(fn) -> float:
    """Peak RSS growth (MiB) of this process while ``fn`` runs (Linux: VmHWM after a reset)."""
    pid = os.getpid()
    reset_hwm(pid)
    before = status_kib(pid, "VmHWM")
    fn()
    return (status_kib(pid, "VmHWM") - before) / 1024


def measure(
    label: str, model_channels: int, size: int, frames: int, videos: int, repeats: int, base: str = "sd15"
) -> dict:
    context_dim = 768 if model_channels >= 320 else 64
    if base == "sdxl":
        unet = make_sdxl_unet(model_channels, context_dim)
        widths, family = tuple(model_channels * m for m in (1, 2, 4)), "sdxl_beta"
    else:
        unet = make_sd15_unet(model_channels, context_dim)
        widths, family = tuple(model_channels * m for m in (1, 2, 4, 4)), "v3"
    found = detect(make_mm_state_dict(family, widths=widths), family)
    model = build_module(found, "cpu", torch.float32)
    x, t, _ = unet_inputs(videos * frames, size=size, context_dim=context_dim)
    context = torch.randn(videos * frames, 77, context_dim)
    layout = FrameLayout()

    def call():
        with torch.no_grad(), layout.using(frames):
            return unet(x, t, context)

    unet_flops = flops(call)
    handle = inject(unet, model, layout, base)
    try:
        mm_measured = flops(call) - unet_flops
        mm_formula, mm_attention = predicted_mm_flops(unet, layout, call)
    finally:
        handle.remove()
    plain_times, injected_times = [], []
    plain_peaks, injected_peaks = [], []
    for _ in range(repeats + 1):  # alternate single calls so background load hits both alike
        plain_times.append(timed(call))
        plain_peaks.append(measured_peak(call))
        handle = inject(unet, model, layout, base)
        try:
            injected_times.append(timed(call))
            injected_peaks.append(measured_peak(call))
        finally:
            handle.remove()
    plain_times, injected_times = plain_times[1:], injected_times[1:]  # drop the warm-up pair
    plain, injected = min(plain_times), min(injected_times)
    predicted = 1 + mm_formula / unet_flops
    return {
        "config": label,
        "unet_gflop": unet_flops / 1e9,
        "mm_gflop": mm_formula / 1e9,
        "formula_ok": mm_measured == mm_formula - mm_attention,
        "plain_s": plain,
        "mm_s": injected,
        "measured": injected / plain,
        "predicted": predicted,
        "quotient": (injected / plain) / predicted,
        "memory": max(injected_peaks[1:]) / max(max(plain_peaks[1:]), 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        measure("small ldm UNet (32 ch), 16 f, 2 videos, 16x16 latent", 32, 16, 16, 2, args.repeats),
        measure("SD1.5 width (320 ch), 16 f, 1 video, 16x16 latent", 320, 16, 16, 1, args.repeats),
        measure("SDXL layout (320 ch), 16 f, 1 video, 16x16 latent", 320, 16, 16, 1, args.repeats, "sdxl"),
    ]
    header = (
        "config",
        "UNet GFLOP",
        "MM GFLOP",
        "formula=counted (w/o SDPA)",
        "plain s",
        "with MM s",
        "measured ratio",
        "predicted ratio",
        "measured/predicted",
        "peak memory ratio",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r['config']} | {r['unet_gflop']:.2f} | {r['mm_gflop']:.2f} | {r['formula_ok']} | "
            f"{r['plain_s']:.3f} | {r['mm_s']:.3f} | {r['measured']:.3f} | {r['predicted']:.3f} | {r['quotient']:.3f} | "
            f"{r['memory']:.2f} |"
        )
    print(
        f"\ntorch {torch.__version__}, {args.threads} thread(s), min of {args.repeats} alternating calls after a warm-up pair"
    )


if __name__ == "__main__":
    main()
