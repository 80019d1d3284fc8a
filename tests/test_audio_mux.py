"""Soundtracks on MP4 (AAC) and WebM (Opus): the audio stream lasts exactly the video's
frames / fps whether the audio is longer (cut) or shorter (padded with silence), it is the given
audio (its beats are where they were), and a failure leaves no file behind."""

from __future__ import annotations

import re
import subprocess
from datetime import datetime

import numpy as np
import pytest
from PIL import Image
from test_audio import FPS, click_track, write_wav

from motion_module.audio_analysis import mel_energy, onset_frames
from motion_module.audio_decode import ffmpeg_binary, load_audio
from motion_module.audio_mux import mux_audio
from motion_module.export import export_video
from motion_module.params import ExportFormat, ExportParams

DAY = datetime(2024, 5, 17)


def frames(n, h=32, w=48):
    return [Image.fromarray(np.full((h, w, 3), (i * 12) % 256, np.uint8)) for i in range(n)]


def probe(path) -> dict:
    """What ``ffmpeg -i`` reports: container duration (s), audio codec, video frame rate."""
    text = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text).groups()
    audio = re.search(r"Stream #\S+.*Audio: (\w+)", text)
    return {
        "duration": int(h) * 3600 + int(m) * 60 + float(s),
        "audio": audio.group(1) if audio else None,
        "fps": float(re.search(r"([\d.]+) fps", text).group(1)),
    }


def video_frame_count(path) -> int:
    """Frames ffmpeg decodes from the video stream (its final progress line)."""
    command = [
        ffmpeg_binary(),
        "-hide_banner",
        "-nostats",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-f",
        "null",
        "-",
    ]
    text = subprocess.run(command + ["-progress", "pipe:1"], capture_output=True, text=True).stdout
    return int(re.findall(r"^frame=(\d+)", text, re.M)[-1])


@pytest.fixture(scope="module")
def track(tmp_path_factory):
    return write_wav(
        tmp_path_factory.mktemp("track") / "clicks.wav", click_track(seconds=4.0)
    )  # 32 frames at 8 fps


def hidden_files(folder):
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.mark.parametrize("fmt, codec", [(ExportFormat.MP4, "aac"), (ExportFormat.WEBM, "opus")])
@pytest.mark.parametrize("count", [20, 40])  # 2.5 s: audio cut; 5 s: audio padded
def test_export_with_audio_lasts_as_long_as_the_video(tmp_path, track, fmt, codec, count):
    result = export_video(
        frames(count), ExportParams(formats=(fmt,), fps=FPS), tmp_path, 1, info="a cat", now=DAY, audio=track
    )
    assert result.ok, result.errors
    path = result.paths[fmt]
    info = probe(path)
    assert info["audio"] == codec and info["fps"] == FPS
    assert info["duration"] == pytest.approx(count / FPS, abs=0.03)
    sound = load_audio(path)  # the muxed audio stream itself
    assert sound.seconds == pytest.approx(count / FPS, abs=0.03)
    assert video_frame_count(path) == count  # the video stream was copied, not re-timed
    beats = [b for b in range(0, min(count, 32), 4)]
    assert max(abs(a - b) for a, b in zip(onset_frames(sound, FPS), beats, strict=True)) <= 1
    if count == 40:  # the last second is padding: silence
        energy = mel_energy(sound, FPS, frames=count)
        assert energy[33:].max() < 1e-4
    assert hidden_files(tmp_path) == []  # no temporary files left


def test_export_without_audio_stays_silent(tmp_path):
    result = export_video(frames(8), ExportParams(formats=(ExportFormat.MP4,), fps=FPS), tmp_path, 1, now=DAY)
    assert probe(result.paths[ExportFormat.MP4])["audio"] is None


def test_mux_keeps_the_infotext(tmp_path, track):
    result = export_video(
        frames(8),
        ExportParams(formats=(ExportFormat.MP4,), fps=FPS),
        tmp_path,
        1,
        info="a cat",
        now=DAY,
        audio=track,
    )
    text = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-i", str(result.paths[ExportFormat.MP4])],
        capture_output=True,
        text=True,
    ).stderr
    assert re.search(r"comment\s*: a cat", text)


def test_unreadable_audio_fails_and_leaves_no_file(tmp_path, track):
    silent = export_video(frames(8), ExportParams(formats=(ExportFormat.MP4,), fps=FPS), tmp_path, 1, now=DAY)
    video = silent.paths[ExportFormat.MP4]
    before = video.read_bytes()
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3\x04\x00" + b"\x00" * 200)
    out = tmp_path / "with_audio.mp4"
    for bad in (broken, tmp_path / "missing.wav", "data:audio/wav;base64,AAAA"):
        with pytest.raises(ValueError, match="^audio"):
            mux_audio(video, bad, out, fps=FPS, frames=8)
        assert not out.exists()
    with pytest.raises(ValueError, match="^audio"):
        mux_audio(video, broken, fps=FPS, frames=8)  # in place: the silent video stays as it was
    assert video.read_bytes() == before
    assert hidden_files(tmp_path) == []


def test_export_with_unreadable_audio_lists_the_error_and_writes_the_rest(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\0\0\0\0WAVE" + b"garbage" * 20)
    params = ExportParams(formats=(ExportFormat.GIF, ExportFormat.MP4, ExportFormat.WEBM), fps=FPS)
    result = export_video(frames(8), params, tmp_path, 1, now=DAY, audio=broken)
    assert set(result.paths) == {ExportFormat.GIF}
    assert set(result.errors) == {"MP4", "WEBM"}
    assert "audio" in result.errors["MP4"] and "cannot be decoded" in result.errors["MP4"]
    folder = tmp_path / "AnimateDiff" / "2024-05-17"
    assert sorted(p.name for p in folder.iterdir()) == ["00000-1.gif"]


def test_mux_refuses_other_containers_and_bad_timing(tmp_path, track):
    video = export_video(frames(4), ExportParams(formats=(ExportFormat.MP4,), fps=FPS), tmp_path, 1, now=DAY)
    path = video.paths[ExportFormat.MP4]
    with pytest.raises(ValueError, match="can add audio to .mp4, .webm files only"):
        mux_audio(path, track, tmp_path / "x.gif", fps=FPS, frames=4)
    with pytest.raises(ValueError, match="fps > 0 and frames >= 1"):
        mux_audio(path, track, fps=0, frames=4)
