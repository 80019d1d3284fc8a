"""Every writer round-trips through its real decoder; names, atomic publishing and errors hold."""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
from datetime import datetime

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from motion_module import export_writers
from motion_module.export import api_images, export_video, ping_pong, prepare_frames, sanitize_request_id
from motion_module.params import ClosedLoop, ExportFormat, ExportParams

F = ExportFormat
DAY = datetime(2024, 5, 17, 12, 0)
INFO = 'a cat, walking\nSteps: 20, Seed: 7, AnimateDiff: "model: mm.safetensors, fps: 8"'


def smooth_frames(n=8, h=40, w=48):
    """Moving smooth colour ramp: ~1D colour set, so one 256-colour palette can hold it."""
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(n):
        v = 0.5 + 0.5 * np.sin(xx / 9 + yy / 13 + t * 0.5) * np.cos(yy / 17 - t * 0.3)
        rgb = np.stack([40 + 180 * v, 90 + 120 * (1 - v), 200 - 150 * v], -1)
        frames.append(Image.fromarray(rgb.astype(np.uint8)))
    return frames


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def decoded_gif(path):
    with Image.open(path) as im:
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(im.convert("RGB"))
            durations.append(im.info["duration"])
        return frames, durations, im.info


def run(tmp_path, formats, frames=None, **params):
    params = ExportParams(formats=tuple(formats), **params)
    return export_video(
        smooth_frames() if frames is None else frames, params, tmp_path, 7, info=INFO, now=DAY
    )


def visible(tmp_path):
    folder = tmp_path / "AnimateDiff" / "2024-05-17"
    return sorted(os.listdir(folder)) if folder.exists() else []


# --- formats -----------------------------------------------------------------------------------


def test_gif_round_trip_frames_duration_loop_comment(tmp_path):
    source = smooth_frames()
    result = run(tmp_path, [F.GIF], frames=source, fps=8, loop_number=3)
    assert result.ok and result.paths[F.GIF] == tmp_path / "AnimateDiff/2024-05-17/00000-7.gif"
    frames, durations, info = decoded_gif(result.paths[F.GIF])
    assert len(frames) == 8 and frames[0].size == (48, 40)
    assert all(abs(d - 125) < 10 for d in durations)  # GIF stores 1/100 s
    assert info["loop"] == 3
    assert info["comment"].decode() == INFO


def test_gif_global_palette_keeps_loop_and_quality(tmp_path):
    source = smooth_frames()
    result = run(tmp_path, [F.GIF], frames=source, gif_palette=True, loop_number=0)
    frames, _, info = decoded_gif(result.paths[F.GIF])
    assert len(frames) == 8 and info["loop"] == 0
    assert min(psnr(a, b) for a, b in zip(frames, source, strict=True)) >= 35
    colours = np.unique(np.concatenate([np.asarray(f).reshape(-1, 3) for f in frames]), axis=0)
    assert len(colours) <= 256  # one palette for the whole video


@pytest.mark.parametrize("dither", ["floyd-steinberg", "none"])
def test_palette_dither_choices(dither):
    out = export_writers.global_palette_frames(smooth_frames(n=2), dither)
    assert all(f.mode == "P" for f in out) and out[0].getpalette() == out[1].getpalette()
    with pytest.raises(export_writers.ExportError, match="unknown dither"):
        export_writers.global_palette_frames(smooth_frames(n=2), "ordered-bayer")


def test_gifsicle_runs_when_present_and_is_reported_when_absent(tmp_path, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gifsicle"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/gifsicle-args\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert run(tmp_path / "a", [F.GIF], gifsicle=True).ok
    assert (tmp_path / "gifsicle-args").read_text().startswith("-O3")

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with caplog.at_level(logging.WARNING, logger="animatediff"):
        result = run(tmp_path / "b", [F.GIF], gifsicle=True)
    assert result.ok and "gifsicle is not on PATH" in caplog.text


def test_mp4_decodes_with_even_padding_fps_and_frames(tmp_path):
    source = smooth_frames(n=6, h=33, w=47)  # odd sizes: yuv420p needs even
    result = run(tmp_path, [F.MP4], frames=source, fps=12, mp4_crf=18, mp4_preset="ultrafast")
    assert result.ok
    reader = imageio.get_reader(result.paths[F.MP4], format="FFMPEG")
    meta = reader.get_meta_data()
    frames = [frame for frame in reader]
    reader.close()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 12
    assert len(frames) == 6 and frames[0].shape == (34, 48, 3)
    assert psnr(frames[3][:33, :47], source[3]) > 30


def test_webm_decodes(tmp_path):
    result = run(tmp_path, [F.WEBM], fps=8)
    reader = imageio.get_reader(result.paths[F.WEBM], format="FFMPEG")
    meta = reader.get_meta_data()
    frames = [frame for frame in reader]
    reader.close()
    assert meta["codec"] == "vp9" and meta["fps"] == 8
    assert len(frames) == 8 and frames[0].shape == (40, 48, 3)


def test_lossless_webp_equals_source_and_carries_infotext(tmp_path):
    source = smooth_frames()
    result = run(tmp_path, [F.WEBP], frames=source, webp_lossless=True, loop_number=2, fps=10)
    with Image.open(result.paths[F.WEBP]) as im:
        assert im.n_frames == 8 and im.size == (48, 40) and im.info["loop"] == 2
        for i, want in enumerate(source):
            im.seek(i)
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(want))
            assert im.info["duration"] == 100  # filled in when the frame is loaded
        comment = im.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + INFO.encode("utf-16-be")


def test_lossy_webp_uses_quality(tmp_path):
    low = run(tmp_path / "low", [F.WEBP], webp_quality=10).paths[F.WEBP].stat().st_size
    high = run(tmp_path / "high", [F.WEBP], webp_quality=95).paths[F.WEBP].stat().st_size
    assert low < high


def test_png_frames_carry_infotext_and_txt_sidecar(tmp_path):
    source = smooth_frames(n=3)
    result = run(tmp_path, [F.PNG, F.TXT], frames=source)
    folder = result.paths[F.PNG]
    assert folder.is_dir() and sorted(os.listdir(folder)) == ["00000.png", "00001.png", "00002.png"]
    for i, want in enumerate(source):
        with Image.open(folder / f"{i:05d}.png") as im:
            assert im.info["parameters"] == INFO
            assert np.array_equal(np.asarray(im), np.asarray(want))
    assert result.paths[F.TXT].read_text(encoding="utf-8") == INFO + "\n"


# --- names -------------------------------------------------------------------------------------


def test_names_sequence_request_id_and_no_leftovers(tmp_path):
    folder = tmp_path / "AnimateDiff" / "2024-05-17"
    folder.mkdir(parents=True)
    (folder / "00041-3.gif").write_bytes(b"")
    params = ExportParams(formats=(F.GIF, F.TXT, F.PNG))
    first = export_video(smooth_frames(n=2), params, tmp_path, 99, request_id="../../etc/pass wd", now=DAY)
    second = export_video(smooth_frames(n=2), params, tmp_path, 99, now=DAY)
    assert first.stem == "00042-99-etc_pass_wd"
    assert second.stem == "00043-99"
    assert visible(tmp_path) == sorted(
        ["00041-3.gif", "00042-99-etc_pass_wd", "00042-99-etc_pass_wd.gif", "00042-99-etc_pass_wd.txt"]
        + ["00043-99", "00043-99.gif", "00043-99.txt"]
    )  # no temporary files or reservation markers remain


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("abc-1.2_x", "abc-1.2_x"),
        ("../x", "x"),
        ("a/b\\c", "a_b_c"),
        ("..", ""),
        ("a..b c", "a.b_c"),
        ("", ""),
    ],
)
def test_sanitize_request_id(raw, clean):
    assert sanitize_request_id(raw) == clean
    assert "/" not in clean and ".." not in clean


# --- failures ----------------------------------------------------------------------------------


def test_failing_writer_leaves_no_file_and_others_still_written(tmp_path, monkeypatch):
    def half_then_crash(job, path):
        path.write_bytes(b"GIF89a half a file")
        raise OSError("disk full")

    monkeypatch.setitem(export_writers.WRITERS, F.GIF, export_writers.WriterSpec(half_then_crash, ".gif"))
    result = run(tmp_path, [F.GIF, F.TXT])
    assert result.errors == {"GIF": "GIF not written: OSError: disk full"}
    assert set(result.paths) == {F.TXT}
    assert visible(tmp_path) == ["00000-7.txt"]


def test_failing_png_folder_writer_leaves_no_folder(tmp_path, monkeypatch):
    def crash_after_one(job, folder):
        folder.mkdir()
        job.frames[0].save(folder / "00000.png")
        raise RuntimeError("encoder crashed")

    monkeypatch.setitem(export_writers.WRITERS, F.PNG, export_writers.WriterSpec(crash_after_one, "", True))
    result = run(tmp_path, [F.PNG, F.GIF])
    assert "PNG" in result.errors and "encoder crashed" in result.errors["PNG"]
    assert visible(tmp_path) == ["00000-7.gif"]


def test_frame_is_an_api_flag_not_a_file(tmp_path):
    """Unknown formats never get here: the parser refuses them (tests/test_params.py)."""
    result = run(tmp_path, [F.TXT, F.FRAME])
    assert not result.errors and set(result.paths) == {F.TXT}


@pytest.mark.parametrize(
    ("frames", "cause"),
    [([], "no frames"), ([Image.new("RGB", (8, 8)), Image.new("RGB", (8, 6))], "different sizes")],
)
def test_bad_frames_name_every_format_and_cause(tmp_path, frames, cause):
    result = run(tmp_path, [F.GIF, F.MP4], frames=frames)
    assert not result.paths and set(result.errors) == {"GIF", "MP4"}
    assert all(msg.startswith(f"{fmt} not written") and cause in msg for fmt, msg in result.errors.items())


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    result = export_video(smooth_frames(n=2), ExportParams(formats=(F.GIF, F.TXT)), blocker, 1, now=DAY)
    assert set(result.errors) == {"GIF", "TXT"} and "cannot create the output folder" in result.errors["GIF"]


def test_missing_encoders_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(export_writers, "ffmpeg_encoders", lambda exe: frozenset())
    monkeypatch.setattr(export_writers.features, "check", lambda name: False)
    result = run(tmp_path, [F.MP4, F.WEBM, F.WEBP, F.GIF])
    assert "no libx264 encoder" in result.errors["MP4"]
    assert "no libvpx-vp9 encoder" in result.errors["WEBM"]
    assert "without WebP support" in result.errors["WEBP"]
    assert visible(tmp_path) == ["00000-7.gif"]


# --- frames before encoding and the API payload --------------------------------------------------


def test_ping_pong_and_closed_loop_a():
    frames = [Image.new("RGB", (2, 2), (i, 0, 0)) for i in range(5)]
    order = [f.getpixel((0, 0))[0] for f in ping_pong(frames)]
    assert order == [0, 1, 2, 3, 4, 3, 2, 1]  # N -> 2N-2, no end frame repeated
    assert len(ping_pong(frames[:2])) == 2 and len(ping_pong(frames[:1])) == 1
    params = ExportParams()
    assert len(prepare_frames(frames, params, closed_loop=ClosedLoop.A, context=16)) == 8
    assert len(prepare_frames(frames, params, closed_loop=ClosedLoop.A, context=4)) == 5  # frames > context
    assert len(prepare_frames(frames, params, closed_loop=ClosedLoop.R_PLUS_P, context=16)) == 5


def test_api_payload_holds_every_video_and_with_frame_every_frame(tmp_path):
    formats = (F.WEBM, F.PNG, F.GIF, F.MP4, F.WEBP, F.FRAME)  # order given by the user does not matter
    params = ExportParams(formats=formats, webp_lossless=True)
    videos = [
        export_video(smooth_frames(n=n, h=16, w=16), params, tmp_path, seed, info=f"v{seed}", now=DAY)
        for n, seed in ((3, 1), (4, 2))
    ]
    images = api_images(videos, formats)
    files = [base64.b64decode(s) for s in images[:8]]
    expected = [videos[v].paths[f].read_bytes() for v in (0, 1) for f in (F.GIF, F.MP4, F.WEBP, F.WEBM)]
    assert files == expected
    frames = [Image.open(io.BytesIO(base64.b64decode(s))) for s in images[8:]]
    assert len(frames) == 3 + 4  # every frame of every video, not only the last one's
    sources = videos[0].frames + videos[1].frames
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(frames, sources, strict=True))
    assert frames[0].info["parameters"] == "v1" and frames[-1].info["parameters"] == "v2"

    gif_and_png = export_video(
        smooth_frames(n=3, h=16, w=16), ExportParams(formats=(F.GIF, F.PNG)), tmp_path, 3
    )
    assert len(api_images([gif_and_png], (F.GIF, F.PNG))) == 1  # PNG frames are saved, never returned
