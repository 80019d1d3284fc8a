"""Benchmark-only WebUI extension: torch.profiler around one generation, on request.

benchmarks/profile_realhost.py starts the server with ``ANIMATEDIFF_BENCH_PROFILE`` naming a
folder and writes ``<folder>/next`` holding a label before a job it wants profiled. The next
generation then runs under ``torch.profiler`` (CPU activities, no shapes, no stacks, no memory:
the cheapest record), from this script's ``before_process`` (after the other extensions', the
folder name sorts last) to its ``postprocess`` (after AnimateDiff's export), and its operators go
to ``<folder>/<label>.json``: name, calls, self and total CPU microseconds, and the wall time.
Not part of the AnimateDiff extension; never installed by it.
"""

from __future__ import annotations

import json
import os
import time

import torch
from modules import scripts

FOLDER = os.environ.get("ANIMATEDIFF_BENCH_PROFILE", "")


class Script(scripts.Script):
    def title(self):
        return "bench profile"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def before_process(self, p, *args):
        request = os.path.join(FOLDER, "next") if FOLDER else ""
        if not request or not os.path.isfile(request):
            return
        with open(request, encoding="utf-8") as fh:
            label = fh.read().strip()
        os.remove(request)
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        profiler.start()
        p.bench_profile = (label, profiler, time.perf_counter())

    def postprocess(self, p, processed, *args):
        running = p.__dict__.pop("bench_profile", None)
        if running is None:
            return
        label, profiler, started = running
        profiler.stop()
        wall = time.perf_counter() - started
        rows = [
            {
                "name": event.key,
                "calls": event.count,
                "self_us": event.self_cpu_time_total,
                "total_us": event.cpu_time_total,
            }
            for event in profiler.key_averages()
        ]
        rows.sort(key=lambda row: -row["self_us"])
        with open(os.path.join(FOLDER, label + ".json"), "w", encoding="utf-8") as fh:
            json.dump({"wall_s": wall, "ops": rows}, fh)
