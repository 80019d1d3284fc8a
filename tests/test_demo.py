"""The headless demo runs the whole engine (inject, windowed sampling, every format) on CPU."""

from __future__ import annotations

import imageio.v2 as imageio
import torch
from PIL import Image
from safetensors.torch import save_file

from motion_module import demo
from motion_module.frames import FrameLayout
from motion_module.injection import inject
from motion_module.params import ExportFormat, WindowParams
from motion_module.spec import Family, alphas_cumprod
from motion_module.toy_unet import ToyUNet
from tests.factories import make_mm_state_dict

SMALL = ["--frames", "6", "--context", "4", "--overlap", "1", "--steps", "2", "--size", "64"]


def test_demo_writes_every_format_and_reports_stages(tmp_path, capsys):
    assert demo.main([*SMALL, "--out", str(tmp_path), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    for stage in (
        "motion module",
        "inject",
        "sample (2 steps, unet windows)",
        "decode",
        "export",
        "write MP4",
    ):
        assert stage in printed
    folder = next((tmp_path / "AnimateDiff").iterdir())
    gif = folder / "00000-3.gif"
    assert str(gif) in printed
    with Image.open(gif) as im:
        assert im.n_frames == 6 and im.size == (64, 64)
    with imageio.get_reader(folder / "00000-3.mp4", format="FFMPEG") as reader:
        assert reader.count_frames() == 6
    assert len(list((folder / "00000-3").glob("*.png"))) == 6
    assert {p.suffix for p in folder.iterdir()} == {"", ".gif", ".mp4", ".webm", ".webp", ".txt"}
    frames = []
    with Image.open(gif) as im:
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(im.convert("RGB").tobytes())
    assert len(set(frames)) == 6  # the frames differ: it moves


def test_demo_takes_a_real_motion_module_file_and_its_widths(tmp_path):
    path = tmp_path / "mm_mini_v2.safetensors"
    save_file(make_mm_state_dict(Family.V2, widths=(32, 64, 64, 64)), str(path))
    args = demo.parse_args(
        [*SMALL, "--motion-module", str(path), "--threads", "1", "--format", "GIF", "--out", str(tmp_path)]
    )
    result, timings = demo.run_demo(args)
    assert result.ok and set(result.paths) == {ExportFormat.GIF} and len(result.frames) == 6
    assert "inject" in timings.stages


def test_closed_loop_a_ping_pongs_short_videos(tmp_path):
    args = demo.parse_args(
        [*SMALL, "--context", "8", "--closed-loop", "A", "--format", "TXT", "--out", str(tmp_path)]
    )
    result, _ = demo.run_demo(args)
    assert len(result.frames) == 2 * 6 - 2


def _sample_same_noise(with_motion_module: bool, frames: int = 8) -> torch.Tensor:
    """The demo's sampling (toy UNet, windowed Euler) with one noise for every frame: (f, 4, 8, 8).

    One window of ``frames`` frames, so every frame has its own position in the temporal attention.
    """
    loaded = demo.random_motion_module(width=32, seed=5)
    torch.manual_seed(5)
    unet = ToyUNet(loaded.model.plan, context_dim=demo.CONTEXT_DIM, attention_levels=range(3)).eval()
    layout = FrameLayout()
    injection = inject(unet, loaded, layout, loaded.spec.base) if with_motion_module else None
    window = WindowParams(context=frames, overlap=0)
    try:
        alphas = alphas_cumprod(loaded.spec)
        return demo.sample(unet, layout, window, frames, 8, 2, 5, alphas, [], same_noise=True)
    finally:
        if injection is not None:
            injection.remove()


def test_identical_noise_moves_only_with_the_motion_module():
    """The first test's frames differ even without motion (each frame has its own seed). With one
    noise for all frames, the plain UNet gives a still image and only the injected motion module's
    temporal attention (which knows each frame's position) can make the frames differ."""
    # Latents reach |x| ~ 80 here, so fp32 rounding is ~1e-5; measured: 0 without the module,
    # 0.02-0.07 with it.
    still = _sample_same_noise(with_motion_module=False)
    assert max((still[k] - still[0]).abs().max().item() for k in range(1, 8)) < 1e-4
    moving = _sample_same_noise(with_motion_module=True)
    spread = [(moving[k] - moving[0]).abs().max().item() for k in range(1, 8)]
    assert min(spread) > 5e-3, spread
