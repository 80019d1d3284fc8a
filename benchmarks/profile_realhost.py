"""Where the time of an AnimateDiff job goes on a real WebUI, next to a plain txt2img batch.

Starts WebUI v1.10.1 as bench_realhost_speed does (``--full-size``: the cached full-size random
SD1.5 checkpoint and v3 module) with the benchmark-only extension benchmarks/profile_extension,
runs each job once untimed, then once under torch.profiler (operators: self CPU time per
operator, no shapes) and, with ``--py-spy``, once sampled by py-spy from outside (Python
functions: self and inclusive samples; py-spy must be in the WebUI's venv). Jobs: a plain batch
of 16 and AnimateDiff at each ``--frames`` length in "motion_module" window mode (context 16,
overlap 8), 64×64, Euler ``--steps``.

Prints per job the top operators with their share of the job's self CPU time, the operators
whose time AnimateDiff adds over the plain batch (ms and share of the plain batch's total), the
top Python functions, and the AnimateDiff (extension and engine) functions by inclusive time.
``--out DIR`` keeps the raw results (``<job>.json``, ``<job>.pyspy.txt``) for a later comparison.

    SD_WEBUI_DIR=... SD_WEBUI_PYTHON=... python benchmarks/profile_realhost.py --full-size --py-spy
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_realhost_speed import BENCH, JOB_TIMEOUT, REALHOST, ROOT, payload

TOP = 15
OURS = ("motion_module/", "animatediff_webui/", "sd-webui-animatediff-next")


def profile_ops(server, folder: Path, label: str, body: dict) -> dict:
    """One job under torch.profiler (through the profile extension); its operator table."""
    (folder / "next").write_text(label)
    server.generate("/sdapi/v1/txt2img", body, timeout=JOB_TIMEOUT)
    return json.loads((folder / f"{label}.json").read_text())


def sample_python(server, py_spy: str, out: Path, body: dict) -> float:
    """One job sampled by py-spy (raw collapsed stacks, per function, idle threads left out)."""
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.proc.pid), "--rate", "50", "--nonblocking"]
        + ["--function", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)  # attached before the job starts
    started = time.perf_counter()
    server.generate("/sdapi/v1/txt2img", body, timeout=JOB_TIMEOUT)
    seconds = time.perf_counter() - started
    spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
    spy.wait(timeout=60)
    return seconds


def stacks(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def python_tables(path: Path) -> tuple[int, collections.Counter, collections.Counter]:
    """(samples, self samples per function, inclusive samples per AnimateDiff function)."""
    total, own, ours = 0, collections.Counter(), collections.Counter()
    for frames, count in stacks(path):
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if any(mark in frame for mark in OURS):
                ours[frame] += count
    return total, own, ours


def short(frame: str) -> str:
    """``func (path/to/file.py)`` -> ``func (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.rstrip(')'))})" if where else name


def print_ops(label: str, result: dict) -> None:
    total = sum(op["self_us"] for op in result["ops"])
    print(
        f"\n### {label}: top operators by self CPU ({total / 1e6:.1f} s profiled, wall {result['wall_s']:.1f} s)\n"
    )
    print("| operator | calls | self ms | share |")
    print("|---|---:|---:|---:|")
    for op in result["ops"][:TOP]:
        print(f"| {op['name']} | {op['calls']} | {op['self_us'] / 1e3:.0f} | {op['self_us'] / total:.1%} |")


def print_added(plain: dict, video: dict, label: str) -> None:
    base = {op["name"]: op for op in plain["ops"]}
    plain_total = sum(op["self_us"] for op in plain["ops"])
    added = []
    for op in video["ops"]:
        before = base.get(op["name"], {"self_us": 0, "calls": 0})
        added.append((op["self_us"] - before["self_us"], op["calls"] - before["calls"], op["name"]))
    added.sort(reverse=True)
    print(f"\n### what {label} adds over the plain batch (self CPU, share of the plain batch's total)\n")
    print("| operator | extra calls | extra ms | share |")
    print("|---|---:|---:|---:|")
    for extra, calls, name in added[:TOP]:
        print(f"| {name} | {calls} | {extra / 1e3:.0f} | {extra / plain_total:.1%} |")


def print_python(label: str, path: Path) -> None:
    total, own, ours = python_tables(path)
    if not total:
        print(f"\n(py-spy recorded nothing for {label})")
        return
    print(f"\n### {label}: Python functions by self samples ({total} samples)\n")
    print("| function | self share |")
    print("|---|---:|")
    for frame, count in own.most_common(TOP):
        print(f"| {short(frame)} | {count / total:.1%} |")
    if ours:
        print(f"\n### {label}: AnimateDiff functions by inclusive samples\n")
        print("| function | inclusive share |")
        print("|---|---:|")
        for frame, count in ours.most_common(TOP):
            print(f"| {short(frame)} | {count / total:.1%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[16])
    parser.add_argument("--py-spy", action="store_true", help="also sample Python frames with py-spy")
    parser.add_argument("--out", type=Path, help="keep the raw profiles here")
    args = parser.parse_args()
    if not os.environ.get("SD_WEBUI_DIR"):
        print("profile_realhost: SD_WEBUI_DIR is not set; nothing measured.")
        return 0
    sys.path[:0] = [str(ROOT), str(REALHOST), str(BENCH)]
    import conftest as harness

    py_spy = str(Path(harness._webui_python(harness._webui_dir())).with_name("py-spy"))
    if args.py_spy and not os.access(py_spy, os.X_OK):
        parser.error(f"--py-spy: {py_spy} not found (pip install py-spy into the WebUI's venv)")
    jobs = {"plain16": payload(args.steps, None, None)}
    jobs.update({f"ad{f}": payload(args.steps, f, "motion_module") for f in args.frames})

    root = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    folder = args.out or root / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["ANIMATEDIFF_BENCH_PROFILE"] = str(folder.resolve())
    server = None
    try:
        if args.full_size:
            ckpt, mm_dir = harness.full_size_checkpoint(), harness.make_motion_modules(root, full_size=True)
        else:
            ckpt, mm_dir = harness.make_checkpoints(root), harness.make_motion_modules(root)

        def prepare(data: Path) -> None:
            shutil.copytree(BENCH / "profile_extension", data / "extensions" / "zz-bench-profile")

        server = harness.start_server(root, "data-profile", ckpt, mm_dir, api_only=True, prepare=prepare)
        print(f"server up (pid {server.proc.pid}); {ckpt.name}; load {os.getloadavg()[0]:.2f}", flush=True)
        ops = {}
        for label, body in jobs.items():
            server.generate("/sdapi/v1/txt2img", body, timeout=JOB_TIMEOUT)  # warm-up
            ops[label] = profile_ops(server, folder, label, body)
            if args.py_spy:
                seconds = sample_python(server, py_spy, folder / f"{label}.pyspy.txt", body)
                print(
                    f"  {label}: profiled {ops[label]['wall_s']:.1f} s, sampled {seconds:.1f} s", flush=True
                )
    finally:
        if server is not None:
            server.stop()
        os.environ.pop("ANIMATEDIFF_BENCH_PROFILE", None)
    for label, result in ops.items():
        print_ops(label, result)
        if label != "plain16":
            print_added(ops["plain16"], result, label)
    if args.py_spy:
        for label in jobs:
            print_python(label, folder / f"{label}.pyspy.txt")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(root, ignore_errors=True)  # the server's data dir; --out lies outside it
    return 0


if __name__ == "__main__":
    sys.exit(main())
