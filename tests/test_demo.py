"""The headless demo runs the whole engine (inject, windowed sampling, every format) on CPU."""

from __future__ import annotations

import imageio.v2 as imageio
from PIL import Image
from safetensors.torch import save_file

from motion_module import demo
from motion_module.params import ExportFormat
from motion_module.spec import Family
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
