"""A full-size SVD-XT job on a real WebUI: does it start on this machine, and what does it cost?

``--full-size-start``: writes (once) a random SVD-XT checkpoint at the official size in the
official layout, bfloat16 on disk (4.8 GB, tensor by tensor: ``svd_factory.write_random_svd``),
into a cache folder outside the checkout (``$ANIMATEDIFF_BENCH_CACHE``, default
``~/.cache/animatediff-bench``). Then it waits until the machine has ``--need-gib`` of memory
available, starts WebUI v1.10.1 as the real-host tier does (tests/realhost: API only, CPU, the
checkpoint linked into its default SVD folder, Settings: weight dtype bfloat16 and the chosen
feed-forward chunk), POSTs a 1024x576, 25-frame job to ``/animatediff/v1/svd`` and polls
``/sdapi/v1/progress`` until the job is sampling, lets it sample ``--sample-seconds``, and
POSTs ``/sdapi/v1/interrupt``. It prints the memory plan the job reported, when the job, the plan,
the end of loading and the start of sampling showed on the progress line, how long the interrupt
took to end the job and what the answer said, the server's peak resident memory (VmHWM after a
reset, and the largest anonymous part, sampled), and whether a plain txt2img works afterwards.

While the job runs, a guard watches the machine's available memory: below ``--floor-gib`` it
interrupts the job at once (other processes share the machine) and says so.

    SD_WEBUI_DIR=/path/to/webui SD_WEBUI_PYTHON=/path/to/venv/bin/python \\
        python benchmarks/bench_svd_realhost.py --full-size-start [--ff-chunk 4096] [--sample-seconds 30]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALHOST = ROOT / "tests" / "realhost"
BENCH = Path(__file__).resolve().parent
CHECKPOINT = "svd_xt_random_bf16.safetensors"  # "xt" in the name: 25 frames
ROUTE = "/animatediff/v1/svd"
GIB = 1024**3


def cache_folder() -> Path:
    folder = Path(os.environ.get("ANIMATEDIFF_BENCH_CACHE") or Path.home() / ".cache" / "animatediff-bench")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def full_size_checkpoint() -> Path:
    """The cached random full-size SVD-XT file, written first if missing (about 40 s)."""
    import torch
    from svd_factory import OFFICIAL, write_random_svd

    path = cache_folder() / CHECKPOINT
    if not path.is_file():
        started = time.perf_counter()
        write_random_svd(path, OFFICIAL, dtype=torch.bfloat16, seed=0)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s")
    return path


def available_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    raise KeyError("MemAvailable")


def wait_for_memory(need: float, minutes: float) -> float:
    deadline = time.monotonic() + 60 * minutes
    while (now := available_gib()) < need and time.monotonic() < deadline:
        print(f"  {now:.1f} GiB available, waiting for {need:.0f} GiB", flush=True)
        time.sleep(30)
    return now


def job_payload(decode_chunk: int, steps: int) -> dict:
    import numpy as np
    from PIL import Image

    x = np.linspace(0, 255, 1024, dtype=np.float32)
    y = np.linspace(0, 255, 576, dtype=np.float32)[:, None]
    pixels = np.stack([np.broadcast_to(x, (576, 1024)), np.broadcast_to(y, (576, 1024)), (x + y) / 2], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return {
        "image": base64.b64encode(buffer.getvalue()).decode(),
        "model": CHECKPOINT,
        "width": 1024,
        "height": 576,
        "frames": 25,
        "steps": steps,
        "seed": 1,
        "decode_chunk": decode_chunk,
        "formats": ["GIF"],
    }


class Timeline:
    """When each thing first showed on ``/sdapi/v1/progress``, in seconds after the POST."""

    def __init__(self):
        self.start = time.monotonic()
        self.seen: dict[str, float] = {}
        self.textinfo: list[str] = []

    def mark(self, name: str) -> None:
        self.seen.setdefault(name, time.monotonic() - self.start)

    def observe(self, body: dict) -> None:
        state, text = body.get("state", {}), body.get("textinfo") or ""
        if text and (not self.textinfo or self.textinfo[-1] != text):
            self.textinfo.append(text)
        if state.get("job") == "animatediff_svd":
            self.mark("job on the progress")
        if "SVD memory on" in text:
            self.mark("plan on the progress line")
        if text.startswith("SVD: encoding"):
            self.mark("loaded (encoding began)")
        if text.startswith("SVD: sampling") or text.startswith("SVD: step"):
            self.mark("sampling began")


def full_size_start(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(ROOT), str(REALHOST), str(BENCH), str(ROOT / "tests")]
    import conftest as harness  # tests/realhost: the tier's server harness
    from bench_controlnet import end_session, status_kib

    reason = harness.skip_reason()
    if reason:
        print(f"bench_svd_realhost: {reason}. Nothing measured.")
        return 0
    checkpoint = full_size_checkpoint()
    print(f"checkpoint: {checkpoint} ({checkpoint.stat().st_size / 1e9:.2f} GB, bfloat16)")
    have = wait_for_memory(args.need_gib, args.wait_minutes)
    if have < args.need_gib:
        print(
            f"NOT STARTED: {have:.1f} GiB available after waiting {args.wait_minutes:.0f} min; the run needs "
            f"{args.need_gib:.0f} GiB (the plan's peak plus the WebUI)."
        )
        return 1
    print(f"{have:.1f} GiB available", flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-svd-full-"))
    server = None
    try:
        ckpt = harness.make_checkpoints(root)
        mm_dir = harness.make_motion_modules(root)

        def prepare(data: Path) -> None:
            folder = data / "models" / "svd"
            folder.mkdir(parents=True)
            (folder / CHECKPOINT).symlink_to(checkpoint)
            config = json.loads((data / "config.json").read_text())
            config.update(animatediff_svd_dtype="bfloat16", animatediff_svd_ff_chunk=args.ff_chunk)
            (data / "config.json").write_text(json.dumps(config))

        started = time.perf_counter()
        server = harness.start_server(root, "data-svd-full", ckpt, mm_dir, api_only=True, prepare=prepare)
        pid = server.proc.pid
        print(
            f"server up in {time.perf_counter() - started:.0f} s (pid {pid}, {server.threads} torch thread(s)); "
            f"RSS {status_kib(pid, 'VmRSS') / 2**20:.2f} GiB",
            flush=True,
        )
        return run_job(args, server)
    finally:
        end_session(server, root, args.keep)


def run_job(args: argparse.Namespace, server) -> int:
    """The job, the interrupt once it samples, the report; then a plain txt2img."""
    from bench_controlnet import RSSSampler, reset_hwm, status_kib
    from realhost_server import PLAIN

    pid = server.proc.pid
    payload = job_payload(args.decode_chunk, args.steps)
    log_offset = server.log_size()
    result: dict = {}
    hwm = reset_hwm(pid)
    timeline = Timeline()
    low_memory: list[float] = []

    def post() -> None:
        result["response"] = server.post(ROUTE, payload, timeout=args.timeout)
        result["at"] = time.monotonic() - timeline.start

    with RSSSampler(pid, 0.5) as rss, RSSSampler(pid, 0.5, key="RssAnon") as anon:
        worker = threading.Thread(target=post, daemon=True)
        timeline.start = time.monotonic()
        worker.start()
        interrupted_at = None
        while worker.is_alive():
            timeline.observe(server.get("/sdapi/v1/progress?skip_current_image=true").json())
            now = time.monotonic() - timeline.start
            if interrupted_at is None:
                floor = available_gib()
                sampling = timeline.seen.get("sampling began")
                if floor < args.floor_gib:
                    low_memory.append(floor)
                if low_memory or (sampling is not None and now >= sampling + args.sample_seconds):
                    server.post("/sdapi/v1/interrupt", {}, timeout=30)
                    interrupted_at = now
                    print(f"  interrupt sent at {now:.1f} s", flush=True)
                elif now > args.timeout:
                    server.post("/sdapi/v1/interrupt", {}, timeout=30)
                    interrupted_at = now
            time.sleep(0.5)
        worker.join()
    peak = status_kib(pid, "VmHWM") / 2**20 if hwm else rss.peak / 2**20
    response = result["response"]
    log = server.log_since(log_offset)
    after = server.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]

    print("\n## Full-size SVD-XT start on the real WebUI (CPU, bfloat16)\n")
    body = response.json() if response.status_code == 200 else {}
    plan = body.get("memory_plan") or next(
        (t.split(". ", 1)[1] for t in timeline.textinfo if "SVD memory on" in t), "(none reported)"
    )
    print(f"- plan: {plan}")
    print(f"- plan lines in the server log during the job: {len(re.findall('SVD memory on', log))}")
    for name, at in timeline.seen.items():
        print(f"- {name}: {at:.1f} s after the POST")
    if "job on the progress" in timeline.seen and "loaded (encoding began)" in timeline.seen:
        load = timeline.seen["loaded (encoding began)"] - timeline.seen["job on the progress"]
        print(
            f"- load time (job shown to encoding): about {load:.1f} s (safetensors maps the file: weights "
            "are read from it as each network first runs, inside the following stages)"
        )
    if low_memory:
        print(f"- INTERRUPTED BY THE GUARD: {low_memory[0]:.2f} GiB available < {args.floor_gib} GiB")
    if interrupted_at is not None:
        print(
            f"- interrupt at {interrupted_at:.1f} s; the answer came {result['at'] - interrupted_at:.1f} s later"
        )
    print(
        f"- answer: HTTP {response.status_code}; "
        + (
            f"interrupted {body.get('interrupted')}, frames {body.get('frame_count')}, info {body.get('info')!r}"
            if body
            else response.text[:500]
        )
    )
    print(f"- progress after: job {after.get('job')!r}, job_count {after.get('job_count')}")
    clean = (
        response.status_code == 200
        and body.get("interrupted") is True
        and after.get("job") == ""
        and after.get("job_count") == 0
    )
    print(f"- stopped cleanly: {clean}")
    source = "VmHWM after reset" if hwm else "VmRSS sampled every 0.5 s"
    print(
        f"- server peak RSS: {peak:.2f} GiB ({source}); largest anonymous RSS {anon.peak / 2**20:.2f} GiB; "
        f"before the job {rss.start / 2**20:.2f} GiB"
    )
    print(f"- progress lines seen: {len(timeline.textinfo)}; first: {timeline.textinfo[:1]}")
    plain_started = time.perf_counter()
    plain_response = server.post("/sdapi/v1/txt2img", PLAIN)
    images = len(plain_response.json().get("images", [])) if plain_response.status_code == 200 else 0
    print(
        f"- plain txt2img afterwards: HTTP {plain_response.status_code}, {images} images, "
        f"{time.perf_counter() - plain_started:.1f} s"
    )
    return 0 if clean and images else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size-start", action="store_true", help="the run described above")
    parser.add_argument("--ff-chunk", type=int, default=4096, help="Settings: feed-forward chunk (rows)")
    parser.add_argument("--decode-chunk", type=int, default=4, help="the request's decode chunk")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sample-seconds", type=float, default=30, help="sampling time before the interrupt")
    parser.add_argument("--need-gib", type=float, default=14, help="available memory to wait for")
    parser.add_argument("--wait-minutes", type=float, default=20)
    parser.add_argument("--floor-gib", type=float, default=1.5, help="interrupt when less is available")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the whole job")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (server log inside)")
    args = parser.parse_args()
    if not args.full_size_start:
        parser.error("choose the run: --full-size-start")
    if not os.environ.get("SD_WEBUI_DIR"):
        print(
            "bench_svd_realhost: SD_WEBUI_DIR is not set; this benchmark needs a WebUI v1.10.1 checkout "
            "(and SD_WEBUI_PYTHON, its interpreter). Nothing measured."
        )
        return 0
    return full_size_start(args)


if __name__ == "__main__":
    sys.exit(main())
