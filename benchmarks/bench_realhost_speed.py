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

``--full-size`` runs a random SD1.5 checkpoint at the real sizes (UNet 320 channels, CLIP ViT-L
text encoder, VAE 128 channels; fp16 on disk, fp32 in the server) and a random v3 module at
mm_sd15_v3's widths, both built once into make_assets' cache folder (~3 GB, outside the
checkout). The server then holds ~6 GB; one job of 128 frames in "unet" mode takes minutes on
one thread.

Beside the measured ratios it prints the FLOP ratio each job would have if time followed FLOPs
(benchmarks/sd15_flops.py counts the UNet, the motion module at a window of 16, the VAE decoder
and the text encoder of the checkpoint): the motion module's share of a UNet call, and for each
job (UNet and motion module over every window the schedule gives at each step, VAE per frame,
text encoder per prompt) its FLOPs over the plain batch's. That ratio is the floor a job's time
ratio can reach while the motion module's own FLOPs are spent.

    SD_WEBUI_DIR=/path/to/webui SD_WEBUI_PYTHON=/path/to/venv/bin/python \\
        python benchmarks/bench_realhost_speed.py [--full-size] [--repeat 2] [--steps 4] [--frames 16 64 128]
"""

from __future__ import annotations

import argparse
import json
import os
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
JOB_TIMEOUT = 7200  # seconds: at full size a 128-frame "unet" job takes ~10 min on a busy core
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


def count_flops(ckpt: Path) -> dict:
    """benchmarks/sd15_flops.py under the WebUI's interpreter for ``ckpt``'s yaml."""
    from conftest import run_webui_python

    args = ["--yaml", str(ckpt.with_suffix(".yaml")), "--latent", str(SIZE // 8), "--window", str(CONTEXT)]
    return json.loads(run_webui_python(BENCH / "sd15_flops.py", *args, timeout=600)[-1])


def job_flops(flops: dict, steps: int, frames: int | None, mode: str | None) -> float:
    """FLOPs of one job: UNet and motion module over cond + uncond rows at every step (over the
    schedule's windows when the video is longer than the context; in "motion_module" mode the
    module's window-independent part once per frame), VAE per frame, text per prompt."""
    from motion_module.params import WindowMode, WindowParams
    from motion_module.windows import schedule

    text = 2 * flops["text_pass"]  # the prompt and the negative prompt, once per job
    if frames is None:
        return steps * 2 * PLAIN_BATCH * flops["unet_row"] + PLAIN_BATCH * flops["vae_frame"] + text
    params = WindowParams(context=CONTEXT, overlap=OVERLAP, mode=WindowMode(mode))
    unet = motion = 0.0
    for step in range(steps):
        evaluated = sum(len(w) for w in schedule(frames, step, params))  # frames the windows hold
        unet += 2 * (frames if mode == "motion_module" else evaluated) * flops["unet_row"]
        if mode == "motion_module":
            once = flops["mm_row_per_frame"]
            motion += 2 * (frames * once + evaluated * (flops["mm_row"] - once))
        else:
            motion += 2 * evaluated * flops["mm_row"]
    return unet + motion + frames * flops["vae_frame"] + text


def frame_bytes(flops: dict) -> int:
    """What one more frame may add to a job's peak memory: its latent, its decoded image (the
    float tensor and the 8-bit image), and its text conditioning as the WebUI holds it (cond and
    uncond rows, and their concatenation handed to the UNet: 4 rows of 77 tokens)."""
    latent = 4 * (SIZE // 8) ** 2 * 4
    decoded = 3 * SIZE * SIZE * (4 + 1)
    conditioning = 4 * 77 * flops["context_dim"] * 4
    return latent + decoded + conditioning


def run_job(server, job: dict) -> dict:
    from bench_controlnet import RSSSampler, reset_hwm, status_kib
    from realhost_server import decode_image

    pid = server.proc.pid
    hwm_reset = reset_hwm(pid)
    with RSSSampler(pid) as rss:
        start = time.perf_counter()
        body = server.generate("/sdapi/v1/txt2img", job["payload"], timeout=JOB_TIMEOUT)
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
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="window modes to run (default: both)"
    )
    parser.add_argument("--allocator", choices=list(ALLOCATORS), default="release")
    parser.add_argument(
        "--full-size", action="store_true", help="full-size random SD1.5 and v3 module (cached, ~3 GB)"
    )
    parser.add_argument(
        "--warm-up",
        choices=["all", "short"],
        default="all",
        help="untimed first run of every job, or only of the plain batch and the shortest videos",
    )
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
    from bench_controlnet import end_session

    reason = harness.skip_reason()
    if reason:
        print(f"bench_realhost_speed: {reason}. Nothing measured.")
        return 0

    jobs = [{"name": f"plain txt2img batch {PLAIN_BATCH}", "frames": None, "mode": None}]
    for frames in args.frames:
        for mode in args.modes:
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
        if args.full_size:
            ckpt = harness.full_size_checkpoint()
            mm_dir = harness.make_motion_modules(root, full_size=True)
        else:
            ckpt = harness.make_checkpoints(root)
            mm_dir = harness.make_motion_modules(root)
        flops = count_flops(ckpt)
        server = harness.start_server(root, "data-speed", ckpt, mm_dir, api_only=True)
        print(
            f"server up in {time.perf_counter() - started:.0f} s (pid {server.proc.pid}, {server.threads} torch "
            f"thread(s), allocator '{args.allocator}'); {ckpt.name}, {SIZE}×{SIZE}, Euler {args.steps} steps",
            flush=True,
        )
        short = args.frames[0]
        warm = [j for j in jobs if args.warm_up == "all" or j["frames"] in (None, short)]
        for job in warm:  # warm-up, not counted
            t = run_job(server, job)["seconds"]
            print(f"  warm-up {job['name']}: {t:.2f} s", flush=True)
        for n in range(args.repeat):
            for job in jobs:
                job["runs"].append(run_job(server, job))
            print(
                f"  round {n + 1}: "
                + " ".join(f"{j['runs'][-1]['seconds']:.2f}" for j in jobs)
                + f" (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    finally:
        realhost_server.server_env = tier_env
        end_session(server, root, args.keep)
    load_after = os.getloadavg()

    for job in jobs:
        job["time"] = statistics.median(r["seconds"] for r in job["runs"])
        job["peak"] = max(r["peak"] for r in job["runs"])
        job["flops"] = job_flops(flops, args.steps, job["frames"], job["mode"])
    base = jobs[0]
    source = "VmHWM after reset" if all(r["hwm"] for j in jobs for r in j["runs"]) else "VmRSS sampled 0.2 s"
    print()
    print(
        f"| job | time / plain batch {PLAIN_BATCH} | FLOPs / plain (floor) | peak RSS / plain batch "
        f"{PLAIN_BATCH}'s | median s | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for job in jobs:
        print(
            f"| {job['name']} | {job['time'] / base['time']:.2f} | {job['flops'] / base['flops']:.2f} | "
            f"{job['peak'] / base['peak']:.3f} | {job['time']:.2f} | {job['peak']:.0f} |"
        )
    print()
    share = flops["mm_row"] / flops["unet_row"]
    print(
        f"motion module FLOPs: {share:.1%} of a UNet call's ({flops['mm_row'] / 1e9:.2f} vs "
        f"{flops['unet_row'] / 1e9:.2f} GFLOP per row at a {SIZE // 8}² latent, window {CONTEXT}; "
        f"{flops['mm_row_per_frame'] / flops['mm_row']:.1%} of it runs once per frame in motion-module "
        f"windows); VAE "
        f"decoder {flops['vae_frame'] / 1e9:.1f} GFLOP per frame, text encoder "
        f"{flops['text_pass'] / 1e9:.1f} GFLOP per prompt"
    )
    print()
    short, longest = args.frames[0], args.frames[-1]
    print(
        f"| window mode | R² time ~ frames ({'/'.join(map(str, args.frames))}) | s per frame (slope) "
        f"| peak RSS {longest} f / {short} f | peak RSS growth {short} f → {longest} f (MiB) | allowed: "
        "latents, decoded frames, conditioning (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    allowed = (longest - short) * frame_bytes(flops) / 2**20
    for mode in args.modes:
        mine = {j["frames"]: j for j in jobs if j["mode"] == mode}
        xs = [float(f) for f in args.frames]
        _, slope, r2 = r_squared(xs, [mine[f]["time"] for f in args.frames])
        growth = mine[longest]["peak"] - mine[short]["peak"]
        print(
            f"| {mode} | {r2:.4f} | {slope:.3f} | {mine[longest]['peak'] / mine[short]['peak']:.3f} | "
            f"{growth:.0f} | {allowed:.0f} |"
        )
    print()
    print(
        f"peak RSS from {source}; {args.repeat} timed rounds after one warm-up each; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs); "
        f"total {time.perf_counter() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
