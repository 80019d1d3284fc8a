"""Video → frames: every frame in order, the right fps, probe agreeing with extraction, fallbacks,
and base64 video data from the API. Test videos (a square moving right, 24 frames at 12 fps) are
written at test time with ffmpeg (MP4/H.264, WebM/VP9, MOV/H.264) and Pillow (GIF, animated WebP).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from motion_module import video_frames
from motion_module.media_paths import list_frame_files
from motion_module.video_frames import (
    decode_video_data,
    extract_frames,
    new_frames_folder,
    probe_video,
    sniff_container,
)

FRAMES, FPS, SIZE, SQUARE = 24, 12, 64, 8
FORMATS = ["mp4", "webm", "mov", "gif", "webp"]


def square_x(i: int) -> float:
    """Centre column of the square in frame ``i``: it moves 2 px right per frame."""
    return 2 + 2 * i + (SQUARE - 1) / 2


def clip() -> list[np.ndarray]:
    frames = []
    for i in range(FRAMES):
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        left = int(square_x(i) - (SQUARE - 1) / 2)
        frame[24 : 24 + SQUARE, left : left + SQUARE] = 255
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    import imageio.v2 as imageio

    folder = tmp_path_factory.mktemp("videos")
    frames = clip()
    out = {}
    for ext, codec in (("mp4", "libx264"), ("webm", "libvpx-vp9"), ("mov", "libx264")):
        out[ext] = folder / f"clip.{ext}"
        writer = imageio.get_writer(
            out[ext], format="FFMPEG", fps=FPS, codec=codec, pixelformat="yuv420p", ffmpeg_log_level="error"
        )
        for frame in frames:
            writer.append_data(frame)
        writer.close()
    images = [Image.fromarray(f) for f in frames]
    for ext, extra in (("gif", {}), ("webp", {"lossless": True})):
        out[ext] = folder / f"clip.{ext}"
        images[0].save(
            out[ext], save_all=True, append_images=images[1:], duration=1000 / FPS, loop=0, **extra
        )
    return out


def centre_x(path: str) -> float:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    weights = np.where(grey > 128, grey, 0).sum(axis=0)
    return float((weights * np.arange(SIZE)).sum() / weights.sum())


def assert_fps(ext: str, fps: float) -> None:
    """Exact for the ffmpeg-written containers. GIF stores delays in 10 ms steps (1000/12 ms is
    written as 80 or 90 ms); WebP in whole ms (83 ms, 12.05 fps; ffmpeg reports 12.08)."""
    if ext == "gif":
        assert 1000 / 90 <= fps <= 1000 / 80
    elif ext == "webp":
        assert fps == pytest.approx(FPS, abs=0.1)
    else:
        assert fps == pytest.approx(FPS, abs=1e-6)


def assert_clip(info, ext: str, folder: Path) -> None:
    assert info.count == len(info.files) == FRAMES
    assert info.size == (SIZE, SIZE) and info.folder == folder
    assert [Path(f).name for f in info.files] == [f"{i:05d}.png" for i in range(FRAMES)]
    assert list_frame_files(folder) == list(info.files)  # nothing else in the folder
    positions = [centre_x(f) for f in info.files]
    assert all(b > a for a, b in zip(positions[:-1], positions[1:], strict=True))  # in order, no frame twice
    assert max(abs(p - square_x(i)) for i, p in enumerate(positions)) < 1.0  # and none missing
    assert_fps(ext, info.fps)


# OpenCV's VideoCapture cannot read animated WebP: that case is the refusal test below
CASES = [(ext, m) for ext in FORMATS for m in ("auto", "ffmpeg", "opencv") if (ext, m) != ("webp", "opencv")]
CASES += [("gif", "pillow"), ("webp", "pillow")]


@pytest.mark.parametrize("ext,method", CASES)
def test_every_frame_in_order_at_the_source_fps(videos, tmp_path, ext, method) -> None:
    info = extract_frames(videos[ext], tmp_path / "frames", method)
    assert_clip(info, ext, tmp_path / "frames")
    assert probe_video(videos[ext], method) == (info.count, info.fps)  # the count the UI shows


def test_an_undecodable_video_names_video_source_and_every_decoder(videos, tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r"^video_source '.*clip.webp' could not be decoded .*opencv: no frames"
    ):
        extract_frames(videos["webp"], tmp_path / "f", "opencv")
    assert list((tmp_path / "f").iterdir()) == []
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video" * 50)
    with pytest.raises(ValueError, match=r"could not be decoded as a video \(ffmpeg: .+; opencv: .+\)"):
        probe_video(junk)
    with pytest.raises(ValueError, match=r"^video_source '.*missing.mp4' is not a file"):
        extract_frames(tmp_path / "missing.mp4", tmp_path / "g")
    with pytest.raises(ValueError, match="method 'av' is unknown; allowed: auto, ffmpeg, opencv, pillow"):
        probe_video(videos["mp4"], "av")


def test_opencv_takes_over_when_ffmpeg_fails_midway(videos, tmp_path, monkeypatch, caplog) -> None:
    """ffmpeg writes five frames then dies: they are removed and OpenCV writes all 24 afresh."""
    import imageio_ffmpeg

    real = imageio_ffmpeg.read_frames

    def dies_after_five(path, **kwargs):
        frames = real(path, **kwargs)
        yield next(frames)
        for _ in range(5):
            yield next(frames)
        frames.close()
        raise RuntimeError("ffmpeg crashed")

    monkeypatch.setattr(imageio_ffmpeg, "read_frames", dies_after_five)
    with caplog.at_level(logging.WARNING, logger="animatediff"):
        info = extract_frames(videos["mp4"], tmp_path / "frames")
    assert_clip(info, "mp4", tmp_path / "frames")
    assert "opencv decoded" in caplog.text and "ffmpeg crashed" in caplog.text
    assert probe_video(videos["mp4"]) == (FRAMES, FPS)  # the probe falls back the same way


def test_ffmpeg_takes_over_when_pillow_cannot_read_the_gif(videos, tmp_path, monkeypatch) -> None:
    def broken(path, sink):
        raise OSError("truncated")

    monkeypatch.setitem(video_frames.DECODERS, "pillow", broken)
    info = extract_frames(videos["gif"], tmp_path / "frames")
    assert_clip(info, "gif", tmp_path / "frames")


def test_extraction_needs_a_fresh_folder(videos, tmp_path) -> None:
    (tmp_path / "old.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is not empty"):
        extract_frames(videos["gif"], tmp_path)
    folder = new_frames_folder(tmp_path, "/uploads/My clip.mp4")
    assert folder.parent == tmp_path and folder.name.startswith("My clip-") and len(folder.name) == 16
    assert not folder.exists() and new_frames_folder(tmp_path, "x.mp4") != new_frames_folder(
        tmp_path, "x.mp4"
    )


# --- base64 video data ------------------------------------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
def test_containers_are_recognised_by_their_magic_bytes(videos, ext) -> None:
    assert sniff_container(videos[ext].read_bytes()[:64]) == f".{ext}"


@pytest.mark.parametrize("ext", FORMATS)
def test_base64_round_trip(videos, tmp_path, ext) -> None:
    raw = videos[ext].read_bytes()
    encoded = base64.b64encode(raw).decode()
    plain = decode_video_data(encoded, tmp_path / "up")
    # a data URL with line breaks and a wrong MIME type still decodes; the suffix comes from the bytes
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    url = decode_video_data(f"data:video/x-unknown;base64,{wrapped}", tmp_path / "up")
    for path in (plain, url):
        assert path.parent == tmp_path / "up" and path.suffix == f".{ext}"
        assert path.read_bytes() == raw
    assert plain != url
    assert probe_video(url)[0] == FRAMES


def test_a_path_is_returned_as_given(videos, tmp_path) -> None:
    assert decode_video_data(f" {videos['mp4']} ", tmp_path) == videos["mp4"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value,message",
    [
        ("", r"^video_source is empty"),
        ("/no/such/clip.mp4", r"^video_source '/no/such/clip.mp4' is neither an existing file nor base64"),
        ("data:video/mp4,AAAA", r"^video_source is a data URL without base64 data"),
        (
            base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode(),
            r"^video_source holds 48 bytes .* not a video",
        ),
        ("@@not base64@@", r"neither an existing file nor base64 video data"),
    ],
)
def test_unreadable_video_data_is_refused(tmp_path, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        decode_video_data(value, tmp_path / "up")
    assert not (tmp_path / "up").exists()
