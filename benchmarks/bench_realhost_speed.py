"""Speed and peak memory of AnimateDiff jobs on a real WebUI, against a plain txt2img batch of 16.

Starts WebUI v1.10.1 (``SD_WEBUI_DIR``, its python in ``SD_WEBUI_PYTHON``) as the real-host tier
does (tests/realhost: tiny random SD1.5 checkpoint, random v3 motion module at its widths) and
times, in ONE server session, 64×64 txt2img with Euler at ``--steps`` steps: a plain batch of 16
(no AnimateDiff: the baseline), then AnimateDiff at 16 frames and at longer lengths (context 16,
overlap 8) in each ``window_mode`` ("unet": the whole UNet runs per window; "motion_module": only
the temporal attention does). One untimed warm-up of every job, then ``--repeat`` rounds that
alternate all jobs (A B C ... A B C ...) so machine load hits them alike. Per job: the median wall
time and the largest peak RSS of the server (VmHWM after resetting it through
/proc/<pid>/clear_refs, else VmRSS sampled every 0.2 s), both as ratios to the plain batch; per
window mode the R² of a linear fit of time over frames, and peak RSS at the longest length over
16 frames. Without ``SD_WEBUI_DIR`` it says so and exits 0.

By default the server's glibc hands freed blocks >= 128 KiB straight back to the kernel
(``--allocator release``), so each job's peak RSS is its own and not an earlier job's leftover
heap; every job pays the same page faults for it. ``--allocator tier`` keeps the tier's settings
(faster, but RSS then only grows across the session).

No ``--full`` (full-size SD1.5, model_channels 320): tests/realhost/make_assets.py only builds
the scaled-down checkpoint (widths hard-coded at 32) and the motion-module factory its widths.

    SD_WEBUI_DIR=/path/to/webui SD_WEBUI_PYTHON=/path/to/venv/bin/python \\
        python benchmarks/bench_realhost_speed.py [--repeat 2] [--steps 4] [--frames 16 64 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALHOST = ROOT / "tests" / "realhost"
BENCH = Path(__file__).resolve().parent
CONTEXT, OVERLAP, SIZE, PLAIN_BATCH = 16, 8, 64, 16
MODES = ("unet", "motion_module")
ALLOCATORS = {
    "release": "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072",
    "tier": None,
}


def payload(steps: int, frames: int | None, mode: str | None) -> dict:
    """txt2img at 64×64; ``frames`` None: a plain batch of 16 without AnimateDiff."""
    from realhost_server import MM_NAME, txt2img_job

    body = txt2img_job(seed=77, steps=steps, size=SIZE)
    if frames is None:
        body["batch_size"] = PLAIN_BATCH
        return body
    ad = {
        "enable": True,
        "model": MM_NAME,
        "format": ["GIF"],
        "video_length": frames,
        "batch_size": CONTEXT,
        "overlap": OVERLAP,
        "window_mode": mode,
        "fps": 8,
    }
    body["alwayson_scripts"] = {"AnimateDiff": {"args": [ad]}}
    return body


def run_job(server, job: dict) -> dict:
    from bench_controlnet import RSSSampler, reset_hwm, status_kib
    from realhost_server import decode_image

    pid = server.proc.pid
    hwm_reset = reset_hwm(pid)
    with RSSSampler(pid) as rss:
        start = time.perf_counter()
        body = server.generate("/sdapi/v1/txt2img", job["payload"])
        seconds = time.perf_counter() - start
    if job["frames"] is None:
        assert len(body["images"]) >= PLAIN_BATCH, len(body["images"])
    else:
        gif = decode_image(body["images"][0])
        assert gif.format == "GIF" and gif.n_frames == job["frames"], (gif.format, gif.n_frames)
    hwm = status_kib(pid, "VmHWM") / 1024 if hwm_reset else None
    return {"seconds": seconds, "peak": hwm if hwm is not None else rss.peak / 1024, "hwm": hwm is not None}


def r_squared(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line y = a + b·x: (a, b, R²)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="timed rounds (all jobs alternated)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=[16, 64, 128],
        help="video lengths (the first is the short one)",
    )
    parser.add_argument("--allocator", choices=list(ALLOCATORS), default="release")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp folder (server log in data-speed/)"
    )
    args = parser.parse_args()

    if not os.environ.get("SD_WEBUI_DIR"):
        print(
            "bench_realhost_speed: SD_WEBUI_DIR is not set; this benchmark needs a WebUI v1.10.1 "
            "checkout (and SD_WEBUI_PYTHON, its interpreter). Nothing measured."
        )
        return 0
    sys.path[:0] = [str(ROOT), str(REALHOST), str(BENCH)]
    import conftest as harness  # tests/realhost: the tier's server harness
    import realhost_server

    reason = harness.skip_reason()
    if reason:
        print(f"bench_realhost_speed: {reason}. Nothing measured.")
        return 0

    jobs = [{"name": f"plain txt2img batch {PLAIN_BATCH}", "frames": None, "mode": None}]
    for frames in args.frames:
        for mode in MODES:
            label = f"AnimateDiff {frames} frames" + (
                f", context {CONTEXT} overlap {OVERLAP}" if frames > CONTEXT else ""
            )
            jobs.append({"name": f"{label}, {mode}", "frames": frames, "mode": mode})
    for job in jobs:
        job["payload"] = payload(args.steps, job["frames"], job["mode"])
        job["runs"] = []

    tier_env = realhost_server.server_env
    tunables = ALLOCATORS[args.allocator]
    if tunables is not None:
        realhost_server.server_env = lambda threads: {**tier_env(threads), "GLIBC_TUNABLES": tunables}
    load_before = os.getloadavg()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    server = None
    try:
        ckpt = harness.make_checkpoints(root)
        mm_dir = harness.make_motion_modules(root)
        server = harness.start_server(root, "data-speed", ckpt, mm_dir, api_only=True)
        print(
            f"server up in {time.perf_counter() - started:.0f} s (pid {server.proc.pid}, {server.threads} torch "
            f"thread(s), allocator '{args.allocator}'); {SIZE}×{SIZE}, Euler {args.steps} steps",
            flush=True,
        )
        for job in jobs:  # warm-up, not counted
            t = run_job(server, job)["seconds"]
            print(f"  warm-up {job['name']}: {t:.2f} s", flush=True)
        for n in range(args.repeat):
            for job in jobs:
                job["runs"].append(run_job(server, job))
            print(
                f"  round {n + 1}: " + " ".join(f"{j['runs'][-1]['seconds']:.2f}" for j in jobs), flush=True
            )
    finally:
        realhost_server.server_env = tier_env
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()

    for job in jobs:
        job["time"] = statistics.median(r["seconds"] for r in job["runs"])
        job["peak"] = max(r["peak"] for r in job["runs"])
    base = jobs[0]
    source = "VmHWM after reset" if all(r["hwm"] for j in jobs for r in j["runs"]) else "VmRSS sampled 0.2 s"
    print()
    print(
        f"| job | time / plain batch {PLAIN_BATCH} | peak RSS (MiB) / plain batch {PLAIN_BATCH}'s | median s "
        "| peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|")
    for job in jobs:
        print(
            f"| {job['name']} | {job['time'] / base['time']:.2f} | {job['peak'] / base['peak']:.3f} | "
            f"{job['time']:.2f} | {job['peak']:.0f} |"
        )
    print()
    short, longest = args.frames[0], args.frames[-1]
    print(
        f"| window mode | R² time ~ frames ({'/'.join(map(str, args.frames))}) | s per frame (slope) "
        f"| peak RSS {longest} f / {short} f |"
    )
    print("|---|---:|---:|---:|")
    for mode in MODES:
        mine = {j["frames"]: j for j in jobs if j["mode"] == mode}
        xs = [float(f) for f in args.frames]
        _, slope, r2 = r_squared(xs, [mine[f]["time"] for f in args.frames])
        print(f"| {mode} | {r2:.4f} | {slope:.3f} | {mine[longest]['peak'] / mine[short]['peak']:.3f} |")
    print()
    print(
        f"peak RSS from {source}; {args.repeat} timed rounds after one warm-up each; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs); "
        f"total {time.perf_counter() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
