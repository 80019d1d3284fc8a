"""Output seam with fakes shaped like the WebUI's ``p`` and ``Processed``: videos are cut right,
exported, and shown as files (UI), base64 strings (API) or first frames (XYZ grid)."""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from motion_module import export_writers
from motion_module.params import (
    AnimateDiffParams,
    ClosedLoop,
    ExportFormat,
    ExportParams,
    Interp,
    WindowParams,
)
from scripts.animatediff_webui import output

F = ExportFormat


def frame(value: int, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, (value, 255 - value, 40))


def fake_run(n_iter=2, batch_size=4, grid=True, masks=0, is_api=False, tmp_path=None):
    """Images as process_images_inner lays them out: [grid], then per frame the image + masks."""
    frames = [frame(10 * i) for i in range(n_iter * batch_size)]
    images, infotexts = [], []
    for i, f in enumerate(frames):
        images.append(f)
        images += [Image.new("RGB", f.size, (255, 255, 255))] * masks
        infotexts.append(f"frame info video {i // batch_size}")
    if grid:
        images.insert(0, Image.new("RGB", (64, 64)))
        infotexts.insert(0, "grid info")
    processed = SimpleNamespace(
        images=images,
        infotexts=infotexts,
        index_of_first_image=1 if grid else 0,
        all_seeds=[100 + i for i in range(n_iter * batch_size)],
        seed=100,
        comments="",
    )
    p = SimpleNamespace(batch_size=batch_size, n_iter=n_iter, outpath_samples=str(tmp_path), is_api=is_api)
    return p, processed, frames


def video(
    export: ExportParams, frames: int = 4, closed_loop=ClosedLoop.N, request_id=""
) -> AnimateDiffParams:
    """The job's parameters as the output seam reads them."""
    window = WindowParams(context=16, closed_loop=closed_loop)
    return AnimateDiffParams(video_length=frames, window=window, export=export, request_id=request_id)


def first_pixel_values(images):
    return [img.getpixel((0, 0))[0] for img in images]


def test_ui_gets_video_paths_per_video_with_their_infotexts(tmp_path):
    p, processed, _ = fake_run(batch_size=3, tmp_path=tmp_path)
    params = ExportParams(formats=(F.GIF, F.MP4, F.PNG))
    report = output.export_processed(p, processed, video(params, 3))
    assert not report.errors and len(report.videos) == 2
    names = [s.rsplit("/", 1)[1] for s in processed.images]
    assert names == ["00000-100.gif", "00000-100.mp4", "00001-103.gif", "00001-103.mp4"]
    assert processed.infotexts == ["frame info video 0"] * 2 + ["frame info video 1"] * 2
    assert processed.index_of_first_image == 0
    with Image.open(processed.images[2]) as gif:
        assert gif.n_frames == 3  # the frames of the second iteration
    assert first_pixel_values(report.videos[1].frames) == [30, 40, 50]


def test_api_gets_base64_videos_then_every_frame_of_every_video(tmp_path):
    p, processed, frames = fake_run(is_api=True, tmp_path=tmp_path)
    params = ExportParams(formats=(F.GIF, F.WEBP, F.PNG, F.FRAME), webp_lossless=True)
    report = output.export_processed(p, processed, video(params, 4, request_id="job-1"))
    assert all(isinstance(s, str) for s in processed.images)
    assert len(processed.images) == 2 * 2 + 8 and len(processed.infotexts) == len(processed.images)
    assert base64.b64decode(processed.images[2]) == report.videos[1].paths[F.GIF].read_bytes()
    returned = [Image.open(io.BytesIO(base64.b64decode(s))) for s in processed.images[4:]]
    assert first_pixel_values(returned) == first_pixel_values(frames)
    assert report.videos[0].stem == "00000-100-job-1"


def test_mask_images_after_each_frame_are_skipped(tmp_path):
    p, processed, frames = fake_run(n_iter=1, grid=False, masks=2, tmp_path=tmp_path)
    report = output.export_processed(p, processed, video(ExportParams(formats=(F.TXT,)), 4))
    assert first_pixel_values(report.videos[0].frames) == first_pixel_values(frames)


def test_xyz_grid_cell_gets_first_frames(tmp_path):
    p, processed, frames = fake_run(tmp_path=tmp_path)
    output.export_processed(p, processed, video(ExportParams(formats=(F.GIF,))), for_grid=True)
    assert first_pixel_values(processed.images) == [0, 40]
    assert processed.infotexts == ["frame info video 0", "frame info video 1"]


def test_closed_loop_a_ping_pongs_the_video(tmp_path):
    p, processed, _ = fake_run(n_iter=1, tmp_path=tmp_path)
    report = output.export_processed(
        p, processed, video(ExportParams(formats=(F.GIF,)), closed_loop=ClosedLoop.A)
    )
    assert first_pixel_values(report.videos[0].frames) == [0, 10, 20, 30, 20, 10]


def test_errors_reach_comments_and_frames_stay_when_nothing_playable(tmp_path, monkeypatch):
    def broken(job, path):
        raise export_writers.ExportError("GIF: the encoder is missing")

    monkeypatch.setitem(
        export_writers.WRITERS, F.GIF, dataclasses.replace(export_writers.WRITERS[F.GIF], write=broken)
    )
    p, processed, _ = fake_run(n_iter=1, tmp_path=tmp_path)
    before = list(processed.images)
    report = output.export_processed(p, processed, video(ExportParams(formats=(F.GIF, F.PNG)), 4))
    assert report.errors and "GIF not written: the encoder is missing" in processed.comments
    assert processed.images == before  # PNG/TXT only: the gallery keeps showing the frames
    assert report.paths[0].is_dir()


def test_interpolation_uses_the_given_interpolator(tmp_path):
    p, processed, _ = fake_run(n_iter=1, tmp_path=tmp_path)
    params = ExportParams(formats=(F.TXT,), interp=Interp.FILM, interp_x=2)
    calls = []

    def doubler(frames, x):
        calls.append((len(frames), x))
        return [f for f in frames[:-1] for _ in range(x)] + [frames[-1]]

    report = output.export_processed(p, processed, video(params), interpolator=doubler)
    assert calls == [(4, 2)] and len(report.videos[0].frames) == 7


def test_no_deforum_means_built_in_optical_flow():
    assert output.find_film_interpolator() is None


def test_film_adapter_runs_deforum_style_folder_runner(tmp_path):
    def fake_film(model_path, input_folder, save_folder, inter_frames):
        from pathlib import Path

        sources = sorted(Path(input_folder).glob("*.png"))
        Path(save_folder).mkdir()
        n = 0
        for i, path in enumerate(sources):
            copies = 1 if i == len(sources) - 1 else inter_frames + 1
            for _ in range(copies):
                Image.open(path).save(Path(save_folder) / f"frame_{n:09d}.png")
                n += 1

    fetched = []
    interpolate = output.film_interpolator(fake_film, tmp_path, lambda name, folder: fetched.append(name))
    frames = [frame(0), frame(100), frame(200)]
    out = interpolate(frames, 3)
    assert len(out) == 7 and out[0] is frames[0] and out[-1] is frames[-1]
    assert first_pixel_values(out) == [0, 0, 0, 100, 100, 100, 200]
    assert fetched == ["film_net_fp16.pt"]


def test_film_failure_falls_back_to_optical_flow(tmp_path, caplog):
    def broken_film(**kwargs):
        raise RuntimeError("Torch not compiled with CUDA enabled")

    interpolate = output.film_interpolator(broken_film, tmp_path)
    frames = [frame(0, (32, 32)), frame(100, (32, 32))]
    with caplog.at_level(logging.ERROR, logger="animatediff"):
        out = interpolate(frames, 4)
    assert len(out) == 5 and "FILM interpolation failed" in caplog.text
    assert np.array_equal(np.asarray(out[-1]), np.asarray(frames[-1]))


def test_unsplittable_image_list_is_a_clear_error(tmp_path):
    p, processed, _ = fake_run(n_iter=1, grid=False, tmp_path=tmp_path)
    processed.images.append(frame(1))  # one stray image the layout cannot explain
    with pytest.raises(RuntimeError, match="cannot split 5 images into 4 frames"):
        output.export_processed(p, processed, video(ExportParams(formats=(F.GIF,)), 4))


def test_deforum_film_is_found_when_its_package_is_importable(monkeypatch, tmp_path):
    calls = []
    film = ModuleType("film_interpolation.film_inference")
    film.run_film_interp_infer = lambda **kw: calls.append(kw)
    package = ModuleType("film_interpolation")
    package.film_inference = film
    paths = ModuleType("modules.paths")
    paths.models_path = str(tmp_path)
    modules = ModuleType("modules")
    modules.paths = paths
    for name, module in {
        "film_interpolation": package,
        "film_interpolation.film_inference": film,
        "modules": modules,
        "modules.paths": paths,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    interpolate = output.find_film_interpolator()
    assert interpolate is not None
    interpolate([frame(0, (32, 32)), frame(50, (32, 32))], 3)  # the fake writes nothing: falls back
    assert calls[0]["inter_frames"] == 2
    assert calls[0]["model_path"] == str(tmp_path / "Deforum" / "film_interpolation" / "film_net_fp16.pt")
