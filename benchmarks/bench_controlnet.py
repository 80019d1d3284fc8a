"""Video-to-video cost on a real WebUI: one ControlNet unit taking a 64-frame video vs none.

Starts WebUI v1.10.1 (``SD_WEBUI_DIR``, its python in ``SD_WEBUI_PYTHON``) with sd-webui-controlnet
as the real-host tier's ``cn_server`` does (tests/realhost: tiny random checkpoint, random motion
module and ControlNet, the ControlNet probe extension), makes a 64-frame MP4 of a moving square,
and times, in one server session with the jobs alternated (A B A B ...): 64 frames, context 16,
overlap 4, 64×64, Euler, with one ControlNet unit taking the video (A) vs the same job with that
unit disabled and no video (B). Per job it reports wall time, the server's peak resident memory
(VmRSS sampled every 0.2 s in a thread, and VmHWM after resetting it through
/proc/<pid>/clear_refs) and, from the probe, how often ControlNet prepared its hints
(``get_control`` calls and images preprocessed), how often it handed them to the UNet hook, and
how many control-model forwards ran, against the sampling steps. Prints markdown tables.
Without ``SD_WEBUI_DIR`` (or without ControlNet in the checkout) it says so and exits 0.

    SD_WEBUI_DIR=/path/to/webui SD_WEBUI_PYTHON=/path/to/venv/bin/python \\
        python benchmarks/bench_controlnet.py [--repeat 2] [--steps 3] [--frames 64]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALHOST = ROOT / "tests" / "realhost"
CONTEXT, OVERLAP, SIZE, FPS = 16, 4, 64, 12


def square_frame(i: int, size: int = SIZE):
    """Frame ``i``: a white 16-pixel square on black, moving around the frame."""
    import numpy as np

    frame = np.zeros((size, size, 3), np.uint8)
    x, y = 4 + (3 * i) % 44, 8 + i % 40
    frame[y : y + 16, x : x + 16] = 255
    return frame


def write_mp4(path: Path, frames: int) -> Path:
    import imageio.v2 as imageio

    writer = imageio.get_writer(str(path), fps=FPS, codec="libx264", quality=9, macro_block_size=16)
    try:
        for i in range(frames):
            writer.append_data(square_frame(i))
    finally:
        writer.close()
    return path


# --- memory of the server process ---------------------------------------------------------------


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (``echo 5 > clear_refs``); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RSSSampler:
    """Largest VmRSS (or another ``/proc/<pid>/status`` entry in kB, e.g. RssAnon) of ``pid`` seen
    while running, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2, key: str = "VmRSS"):
        self.pid, self.interval, self.key = pid, interval, key
        self.peak = self.start = status_kib(pid, key)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kib(self.pid, self.key))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kib(self.pid, self.key))


# --- jobs -----------------------------------------------------------------------------------------


def end_session(server, root: Path, keep: bool) -> None:
    """Stop a benchmark's WebUI server (if it started) and remove its temp folder, unless ``keep``."""
    if server is not None:
        server.stop()
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def job(cn_model: str, frames: int, steps: int, video: Path | None) -> dict:
    """txt2img with AnimateDiff; ``video`` None: the unit is disabled and no video is given."""
    from realhost_server import MM_NAME, txt2img_job

    ad = {
        "enable": True,
        "model": MM_NAME,
        "format": ["GIF"],
        "batch_size": CONTEXT,
        "overlap": OVERLAP,
        "fps": FPS,
    }
    if video is not None:
        ad.update(video_source=str(video), video_length=0)
    else:
        ad.update(video_length=frames)
    unit = {"enabled": video is not None, "module": "none", "model": cn_model, "weight": 1.0}
    scripts = {"AnimateDiff": {"args": [ad]}, "ControlNet": {"args": [unit]}}
    return txt2img_job(seed=77, steps=steps, size=SIZE, alwayson_scripts=scripts)


def run_job(server, payload: dict, frames: int) -> dict:
    from realhost_server import decode_image

    assert server.post("/realhost/cn-record/reset", {}).status_code == 200
    pid = server.proc.pid
    hwm_reset = reset_hwm(pid)
    offset = server.log_size()
    with RSSSampler(pid) as rss:
        start = time.perf_counter()
        body = server.generate("/sdapi/v1/txt2img", payload)
        seconds = time.perf_counter() - start
    gif = decode_image(body["images"][0])
    assert gif.format == "GIF" and gif.n_frames == frames, (gif.format, gif.n_frames)
    rec = server.get("/realhost/cn-record").json()
    assert not rec["errors"], rec["errors"]
    hooked = re.findall(r"ControlNet Hooked - Time = ([\d.]+)", server.log_since(offset))
    return {
        "seconds": seconds,
        "rss_start": rss.start / 1024,
        "rss_peak": rss.peak / 1024,
        "hwm": status_kib(pid, "VmHWM") / 1024 if hwm_reset else None,
        "get_control": len(rec["controls"]),
        "images": sum(c["images"] for c in rec["controls"]),
        "prepare_s": sum(c["seconds"] for c in rec["controls"]),
        "hook_s": sum(map(float, hooked)),
        "hooks": len(rec["hooks"]),
        "forwards": len(rec["calls"]),
        "forward_s": sum(c.get("seconds", 0.0) for c in rec["calls"]),
    }


ALLOCATORS = {
    # the tier's own settings: freed memory stays in the process (fast; RSS only grows)
    "tier": None,
    # freed blocks >= 128 KiB go back to the kernel at once: RSS follows what is live, so a job's
    # peak is its own, at the price of page faults (slower: times from this session are not used)
    "release": "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072",
}


def run_session(harness, source: Path, allocator: str, args) -> list[dict]:
    """One server, warm-up A and B, then A B A B ... (``args.repeat`` of each)."""
    import realhost_server

    tier_env = realhost_server.server_env
    tunables = ALLOCATORS[allocator]
    if tunables is not None:
        realhost_server.server_env = lambda threads: {**tier_env(threads), "GLIBC_TUNABLES": tunables}
    root = Path(tempfile.mkdtemp(prefix=f"bench-controlnet-{allocator}-"))
    server = None
    rows: list[dict] = []
    try:
        t0 = time.perf_counter()
        ckpt = harness.make_checkpoints(root)
        mm_dir = harness.make_motion_modules(root)
        server = harness.start_server(
            root,
            "data-cn",
            ckpt,
            mm_dir,
            api_only=True,
            prepare=lambda data: harness.prepare_controlnet(data, ckpt, source),
        )
        cn_model = harness.controlnet_model_name(server)
        video = write_mp4(server.data_dir / "media" / f"square{args.frames}.mp4", args.frames)
        print(
            f"session '{allocator}': server up in {time.perf_counter() - t0:.0f} s (pid {server.proc.pid}, "
            f"{server.threads} torch thread(s))",
            flush=True,
        )
        with_cn = job(cn_model, args.frames, args.steps, video)
        without = job(cn_model, args.frames, args.steps, None)
        # warm-up, not counted: loads the motion module and the ControlNet, first-call allocations
        run_job(server, with_cn, args.frames)
        run_job(server, without, args.frames)
        for n in range(args.repeat):
            for kind, payload in (("A", with_cn), ("B", without)):
                result = run_job(server, payload, args.frames)
                result.update(kind=kind, n=n + 1, session=allocator)
                rows.append(result)
                print(f"  {kind}{n + 1}: {result['seconds']:.2f} s", flush=True)
    finally:
        realhost_server.server_env = tier_env
        end_session(server, root, args.keep)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="counted jobs of each kind (alternated)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the temp folders (server log in data-cn/)")
    parser.add_argument(
        "--sessions",
        nargs="+",
        choices=list(ALLOCATORS),
        default=list(ALLOCATORS),
        help="tier: the tier's allocator settings, for the times; release: glibc returns freed memory "
        "at once, for each job's own peak RSS",
    )
    args = parser.parse_args()

    if not os.environ.get("SD_WEBUI_DIR"):
        print(
            "bench_controlnet: SD_WEBUI_DIR is not set; this benchmark needs a WebUI v1.10.1 checkout "
            "with sd-webui-controlnet (and SD_WEBUI_PYTHON, its interpreter). Nothing measured."
        )
        return 0
    sys.path[:0] = [str(ROOT), str(REALHOST)]
    import conftest as harness  # tests/realhost: the tier's server harness

    reason = harness.skip_reason()
    source, why = harness.controlnet_source()
    if reason or source is None:
        print(f"bench_controlnet: {reason or why}. Nothing measured.")
        return 0

    started = time.perf_counter()
    print(
        f"{args.frames} frames {SIZE}×{SIZE}, context {CONTEXT}, overlap {OVERLAP}, Euler {args.steps} steps; "
        "A = one ControlNet unit (module none) taking the MP4, B = same job, unit disabled, no video",
        flush=True,
    )
    rows = [row for session in args.sessions for row in run_session(harness, source, session, args)]

    print()
    print(
        "| session | job | wall s | RSS before MiB | peak RSS MiB (0.2 s samples) | VmHWM MiB (reset) "
        "| get_control calls | images preprocessed | hint hand-overs (UnetHook.hook) "
        "| control forwards | control forward s | sampling steps |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        hwm = f"{r['hwm']:.0f}" if r["hwm"] is not None else "n/a"
        print(
            f"| {r['session']} | {r['kind']}{r['n']} | {r['seconds']:.2f} | {r['rss_start']:.0f} | "
            f"{r['rss_peak']:.0f} | {hwm} | {r['get_control']} | {r['images']} | {r['hooks']} | "
            f"{r['forwards']} | {r['forward_s']:.2f} | {args.steps} |"
        )

    def pick(session: str, kind: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["session"] == session and r["kind"] == kind and r[key] is not None]

    print()
    print("| | A: with ControlNet | B: without | A / B |\n|---|---:|---:|---:|")
    for session in args.sessions:
        a, b = (
            statistics.median(pick(session, "A", "seconds")),
            statistics.median(pick(session, "B", "seconds")),
        )
        note = "" if session == "tier" else " (slowed by page faults)"
        print(f"| median wall s, {session} session{note} | {a:.2f} | {b:.2f} | {a / b:.2f}× |")
    for session in args.sessions:
        for key, label in (("rss_peak", "sampled"), ("hwm", "VmHWM")):
            a_peak, b_peak = pick(session, "A", key), pick(session, "B", key)
            if a_peak and b_peak:
                a_peak, b_peak = max(a_peak), max(b_peak)
                print(
                    f"| peak RSS MiB ({label}), {session} session | {a_peak:.0f} | {b_peak:.0f} | "
                    f"{round(a_peak - b_peak):+d} MiB |"
                )
    first = args.sessions[0]
    print(
        f"| ControlNet hint preparation s ({first}) | {statistics.median(pick(first, 'A', 'prepare_s')):.2f} | – | – |"
    )
    print(
        f"| ControlNet hook set-up s ({first}) | {statistics.median(pick(first, 'A', 'hook_s')):.2f} | – | – |"
    )
    print(
        f"| control-model forwards s ({first}) | {statistics.median(pick(first, 'A', 'forward_s')):.2f} | – | – |"
    )

    controls = [r for r in rows if r["kind"] == "A"]
    plain = [r for r in rows if r["kind"] == "B"]
    once = all(r["get_control"] == 1 and r["images"] == args.frames and r["hooks"] == 1 for r in controls)
    once = once and all(r["get_control"] == r["hooks"] == r["forwards"] == 0 for r in plain)
    print()
    print(
        f"hints prepared once per job, not per step: {'yes' if once else 'NO'} — get_control "
        f"{sorted({r['get_control'] for r in controls})} call(s) per job over "
        f"{sorted({r['images'] for r in controls})} images, handed to the UNet hook "
        f"{sorted({r['hooks'] for r in controls})}× per job, while the control model ran "
        f"{sorted({r['forwards'] for r in controls})} times per job ({args.steps} sampling steps × "
        f"windowed UNet calls); B jobs: no ControlNet work. Total {time.perf_counter() - started:.0f} s."
    )
    return 0 if once else 1


if __name__ == "__main__":
    sys.exit(main())
