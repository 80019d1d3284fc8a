"""``python -m motion_module.demo``: the whole engine end to end, headless, in well under a minute.

A small random-weight UNet (``toy_unet``) gets a motion module injected (random, or a real file
with ``--motion-module``, whose layout then sets the UNet widths), an Euler sampler denoises all
frames through the sliding-window wrapper, a fixed latent-to-RGB projection stands in for the
VAE, and every export format is written. Random weights make moving noise, not pictures: the
point is to see every stage run and how long it takes. No WebUI, no downloads.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from .export import ExportResult, export_video, prepare_frames
from .frames import FrameLayout
from .injection import inject
from .loading import LoadedMotionModule, load_motion_module
from .model import MotionModule
from .params import ClosedLoop, ExportFormat, ExportParams, Interp, WindowMode, WindowParams
from .spec import SPECS, Family, alphas_cumprod
from .toy_unet import ToyUNet, demo_plan
from .windows import WindowedDenoiser, schedule

CONTEXT_DIM = 64
TOKENS = 8
# A fixed latent -> RGB projection (rows: R, G, B): a stand-in for the VAE decoder.
LATENT_TO_RGB = torch.tensor([[0.35, 0.25, 0.25, -0.2], [0.3, 0.4, 0.1, -0.25], [0.25, 0.15, 0.45, -0.3]])


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.stages[name] = time.perf_counter() - start


def random_motion_module(width: int, seed: int) -> LoadedMotionModule:
    """A v3-layout motion module with random weights (sites sized for the toy UNet)."""
    torch.manual_seed(seed)
    spec = SPECS[Family.V3]
    model = MotionModule(demo_plan(width), spec.pe_length, spec=spec).eval().requires_grad_(False)
    return LoadedMotionModule(model, spec, "random", "<random>", "random v3 layout")


def sigmas_for(steps: int, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced timesteps from 999 to 0 and their noise levels, plus a final sigma of 0."""
    timesteps = torch.linspace(len(alphas) - 1, 0, steps).round().long()
    sigmas = ((1 - alphas[timesteps]) / alphas[timesteps]).sqrt()
    return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)])


def sample(
    unet,
    layout: FrameLayout,
    window: WindowParams,
    frames: int,
    latent: int,
    steps: int,
    seed: int,
    alphas: torch.Tensor,
    notes: list[str],
    *,
    same_noise: bool = False,
) -> torch.Tensor:
    """Euler sampling of eps-prediction through the windowed denoiser; returns (f, 4, h, w).

    No classifier-free guidance: one conditioning block is enough to show the windows at work.
    ``same_noise`` gives every frame the noise of ``seed`` (instead of ``seed + i``), so only a
    motion module can make the frames differ.
    """
    noise = torch.stack(
        [
            torch.randn(
                4, latent, latent, generator=torch.Generator().manual_seed(seed + (0 if same_noise else i))
            )
            for i in range(frames)
        ]
    )  # one seed per frame, like the WebUI: (f, 4, h, w)
    context = torch.randn(1, TOKENS, CONTEXT_DIM, generator=torch.Generator().manual_seed(seed)).expand(
        frames, -1, -1
    )
    timesteps, sigmas = sigmas_for(steps, alphas)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x0 prediction for the rows of one call; sigma and context are per row (already sliced)."""
        c_in = 1 / (sigma**2 + 1).sqrt()
        t = timesteps[(sigmas[:-1, None] - sigma[None]).abs().argmin(0)]
        eps = unet(x * c_in[:, None, None, None], t, context)
        return x - sigma[:, None, None, None] * eps

    current = [0]  # the sampler's step, read by the window schedule (seams move between steps)
    run = WindowedDenoiser(denoise, window, layout, frames, step=lambda: current[0])
    x = noise * sigmas[0]
    with torch.no_grad():
        for step in range(steps):
            current[0] = step
            denoised = run(x, sigmas[step].expand(frames), context=context)
            x = denoised + (x - denoised) / sigmas[step] * sigmas[step + 1]
    notes.append(
        f"windows at step 0: {[f'{w[0]}-{w[-1]}' for w in schedule(frames, 0, window)]}; "
        f"{run.calls} UNet calls, {run.frame_evals} frame evaluations for {frames} frames x {steps} steps"
    )
    return x


def decode(latents: torch.Tensor, size: int) -> list[Image.Image]:
    """Latents (f, 4, h, w) -> RGB frames, normalised over the whole video so brightness is steady."""
    rgb = torch.einsum("rc,fchw->frhw", LATENT_TO_RGB, latents)
    rgb = (rgb - rgb.mean()) / (rgb.std() + 1e-6)
    rgb = torch.nn.functional.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
    pixels = ((torch.tanh(rgb / 2) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in pixels]  # (3, h, w) -> (h, w, 3)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` CPU threads inside the block (None: leave torch's choice), then restore."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_demo(args: argparse.Namespace) -> tuple[ExportResult, Timings]:
    # The toy UNet's tensors are tiny: on a busy machine thread hand-offs cost more than the maths.
    threads = args.threads if args.threads is not None else (None if args.motion_module else 1)
    with torch_threads(threads):
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> tuple[ExportResult, Timings]:
    timings = Timings()
    torch.manual_seed(args.seed)
    with timings.stage("motion module"):
        if args.motion_module:
            loaded = load_motion_module(args.motion_module)
        else:
            loaded = random_motion_module(args.width, args.seed)
    plan = loaded.model.plan
    levels = len(plan.down)
    multiple = 8 * 2 ** (levels - 1)
    if args.size % multiple:
        raise SystemExit(f"--size {args.size} must be a multiple of {multiple} for a {levels}-level UNet")
    with timings.stage("UNet (random weights)"):
        attention = range(levels - 1) if loaded.spec.base == "sd15" else range(1, levels)
        unet = ToyUNet(plan, context_dim=CONTEXT_DIM, attention_levels=attention).eval().requires_grad_(False)
    layout = FrameLayout()
    with timings.stage("inject"):
        injection = inject(unet, loaded, layout, loaded.spec.base)
    window = WindowParams(
        context=args.context,
        overlap=args.overlap,
        stride=args.stride,
        closed_loop=args.closed_loop,
        mode=args.window_mode,
    )
    try:
        with timings.stage(f"sample ({args.steps} steps, {args.window_mode.value} windows)"):
            latents = sample(
                unet,
                layout,
                window,
                args.frames,
                args.size // 8,
                args.steps,
                args.seed,
                alphas_cumprod(loaded.spec),
                timings.notes,
            )
    finally:
        injection.remove()
    with timings.stage("decode"):
        frames = decode(latents, args.size)
    interp = Interp.FILM if args.interp_x > 1 else Interp.OFF  # FILM = "interpolate"; optical flow here
    params = ExportParams(formats=tuple(args.format), fps=args.fps, interp=interp, interp_x=args.interp_x)
    with timings.stage("prepare frames"):
        frames = prepare_frames(frames, params, closed_loop=window.closed_loop, context=window.context)
    info = (
        f"AnimateDiff demo, random UNet, motion module: {loaded.variant} [{loaded.hash}], frames: {args.frames}, "
        f"context: {args.context}, overlap: {window.effective_overlap}, steps: {args.steps}, seed: {args.seed}"
    )
    with timings.stage("export"):
        result = export_video(frames, params, args.out, args.seed, info=info)
    return result, timings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m motion_module.demo",
        description="Run the AnimateDiff engine end to end on a small random UNet (moving noise, not pictures).",
    )
    parser.add_argument("--motion-module", help="a motion-module file; its layout sets the UNet widths")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=-1, help="-1 = context // 4")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument(
        "--closed-loop", type=ClosedLoop, default=ClosedLoop.R_MINUS_P, choices=list(ClosedLoop)
    )
    parser.add_argument(
        "--window-mode", type=WindowMode, default=WindowMode.UNET, choices=list(WindowMode),
        help="unet: whole-UNet windows; motion_module: only the temporal attention runs in windows",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (latent = size / 8)")
    parser.add_argument("--width", type=int, default=32, help="base channels of the random motion module")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--interp-x", type=int, default=1, help="> 1 adds optical-flow in-betweens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: 1 for the random UNet)"
    )
    parser.add_argument(
        "--format",
        nargs="+",
        type=ExportFormat,
        default=[f for f in ExportFormat if f is not ExportFormat.FRAME],
        choices=[f for f in ExportFormat if f is not ExportFormat.FRAME],
    )
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    args.out = args.out or tempfile.mkdtemp(prefix="animatediff-demo-")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, timings = run_demo(args)
    for fmt, seconds in result.seconds.items():
        timings.stages[f"  write {fmt.value}"] = seconds
    width = max(len(name) for name in timings.stages)
    print("\nstage" + " " * (width - 3) + "seconds")
    for name, seconds in timings.stages.items():
        print(f"{name:<{width + 2}}{seconds:7.2f}")
    for note in timings.notes:
        print(f"\n{note}")
    print(f"\n{len(result.frames)} frames of moving noise (random weights) written to:")
    for fmt, path in result.paths.items():
        print(f"  {fmt.value:<5} {path}")
    for message in result.errors.values():
        print(f"  error: {message}", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
