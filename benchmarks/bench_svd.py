"""SVD engine cost on this machine: time and peak memory per frame, and the full-size memory plan.

Runs whole ``generate`` jobs on a tiny random checkpoint in the official layout (``tests/svd_factory``,
nothing downloaded) at two sizes, decoding all frames in one call and two frames per call, and
prints a markdown table: wall time per frame and the process's peak resident memory growth
(VmHWM after a reset, as the other benchmarks read it). The tiny networks make the times small;
what the table shows is how cost scales with size and how chunked decoding caps the decoder's
share.

Then it prints the memory plan of a full-size SVD-XT job (25 frames at 1024x576) from the official
network shapes built on the meta device (no weights allocated): the line the SVD tab shows.

    python benchmarks/bench_svd.py [--frames 8] [--steps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_motion_module import measured_peak  # noqa: E402
from PIL import Image  # noqa: E402
from svd_factory import OFFICIAL, write_tiny_svd  # noqa: E402

from motion_module.svd import image_encoder, unet, vae  # noqa: E402
from motion_module.svd.params import SvdParams  # noqa: E402
from motion_module.svd.pipeline import SvdMemory, SvdModel, generate, load_svd, memory_plan  # noqa: E402

SIZES = ((256, 256), (512, 320))
CHUNKS = (0, 2)


def official_meta_model(name: str = "svd_xt.safetensors", dtype: torch.dtype = torch.float16) -> SvdModel:
    """SVD-XT's four networks at full size (``svd_factory.OFFICIAL``) on the meta device: shapes
    and byte counts, no memory."""
    with torch.device("meta"):
        components = {
            "image_encoder": image_encoder.ImageEncoder(OFFICIAL.image_encoder),
            "vae_encoder": vae.VaeEncoder(OFFICIAL.vae_encoder),
            "unet": unet.SvdUNet(OFFICIAL.unet),
            "decoder": vae.TemporalDecoder(OFFICIAL.decoder),
        }
    for module in components.values():
        module.to(dtype)
    return SvdModel(name=name, default_frames=25, components=components, dtype=dtype)


def picture(width: int, height: int) -> Image.Image:
    gradient = torch.linspace(0, 255, width).to(torch.uint8).repeat(height, 1)
    return Image.fromarray(torch.stack([gradient, gradient.flip(1), gradient // 2], -1).numpy())


def measure(model: SvdModel, params: SvdParams) -> tuple[float, float]:
    """(seconds per frame, peak RSS growth in MiB) of one job."""
    elapsed = []

    def job() -> None:
        start = time.perf_counter()
        generate(model, picture(params.width, params.height), params, device=torch.device("cpu"))
        elapsed.append(time.perf_counter() - start)

    peak = measured_peak(job)
    return elapsed[0] / params.frames, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        model = load_svd(write_tiny_svd(folder, "svd"))
    warm = SvdParams(width=64, height=64, frames=2, steps=1, seed=0)
    generate(model, picture(64, 64), warm, device=torch.device("cpu"))

    print(
        f"## SVD jobs, tiny random checkpoint, {args.frames} frames, {args.steps} steps, {args.threads} threads\n"
    )
    print("| size | decode chunk | s / frame | peak RSS growth (MiB) | planned largest activation (MiB) |")
    print("|---|---|---|---|---|")
    for width, height in SIZES:
        for chunk in CHUNKS:
            params = SvdParams(
                width=width, height=height, frames=args.frames, steps=args.steps, seed=1, decode_chunk=chunk
            )
            per_frame, peak = measure(model, params)
            planned = memory_plan(model, params, SvdMemory(), torch.device("cpu")).activations / 2**20
            shown = chunk or "all"
            print(f"| {width}x{height} | {shown} | {per_frame:.3f} | {peak:.0f} | {planned:.0f} |")

    print("\n## Full-size SVD-XT memory plan (official shapes on the meta device, nothing allocated)\n")
    full = SvdParams(width=1024, height=576, frames=25)
    for dtype, device, memory, chunk in (
        (torch.float16, "cuda", SvdMemory(offload=True), 0),
        (torch.float16, "cuda", SvdMemory(offload=True, ff_chunk=4096), 8),
        (torch.float16, "cuda", SvdMemory(offload=False), 8),
        (torch.float32, "cpu", SvdMemory(offload=False), 8),
    ):
        params = dataclasses.replace(full, decode_chunk=chunk)
        plan = memory_plan(official_meta_model(dtype=dtype), params, memory, torch.device(device))
        print(
            f"- {str(dtype).removeprefix('torch.')}, decode chunk {chunk or 'all'}, ff_chunk {memory.ff_chunk}: {plan.describe()}"
        )


if __name__ == "__main__":
    main()
