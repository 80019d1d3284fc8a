"""Real host, SVD: ``POST /animatediff/v1/svd`` on a real WebUI v1.10.1 with tiny random
official-layout checkpoints in its default SVD folder (``<data dir>/models/svd``).

Each job is tiny (64×64, a few steps, random weights); the videos are decoded and their frames
counted. An Interrupt from another thread stops a long job early, and a plain txt2img afterwards
is pixel-identical to the same job on the freshly started server: an SVD job leaves the WebUI as
it found it.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import REPO, serving, start_server
from PIL import Image
from realhost_server import PLAIN, decode_image, encode_image

pytestmark = pytest.mark.realhost

ROUTE = "/animatediff/v1/svd"
SVD_NAME, SVD_XT_NAME = "svd.safetensors", "svd_xt.safetensors"  # the names say 14 and 25 frames
SIZE, FRAMES = 64, 4


def write_checkpoints(folder: Path) -> bool:
    """Tiny random official-layout SVD and SVD-XT checkpoints (the engine's test factory) in
    ``folder``; False when the factory is not in this checkout."""
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from tests.svd_factory import write_tiny_svd
    except ImportError:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_svd(folder / SVD_NAME, "svd", "safetensors")
    write_tiny_svd(folder / SVD_XT_NAME, "svd_xt", "safetensors")
    return True


@pytest.fixture(scope="module")
def svd_server(realhost_root, checkpoint, motion_module_dir):
    """API-only server whose default SVD folder holds the tiny checkpoints (``has_models``: the
    engine's factory was there to write them); ``fresh_plain`` is the PLAIN txt2img right after
    the start."""
    models = realhost_root / "svd-models"
    models.mkdir()
    has_models = write_checkpoints(models)

    def prepare(data: Path) -> None:
        (data / "models").mkdir(parents=True, exist_ok=True)
        (data / "models" / "svd").symlink_to(models, target_is_directory=True)

    server = start_server(
        realhost_root, "data-svd", checkpoint, motion_module_dir, api_only=True, prepare=prepare
    )
    server.has_models = has_models
    with serving(server):
        yield server


@pytest.fixture
def svd_models(svd_server):
    if not svd_server.has_models:
        pytest.skip("tests/svd_factory.py (the SVD engine's test factory) is not in this checkout")
    return svd_server


def input_image() -> str:
    image = Image.new("RGB", (96, 80), (40, 90, 160))
    image.paste((250, 220, 40), (30, 20, 60, 50))
    return encode_image(image)


def svd_job(**fields) -> dict:
    return {
        "image": "data:image/png;base64," + input_image(),
        "model": SVD_NAME,
        "width": SIZE,
        "height": SIZE,
        "frames": FRAMES,
        "steps": 2,
        "seed": 5,
        "formats": ["GIF", "MP4"],
        **fields,
    }


def gif_frame_count(b64: str) -> int:
    image = decode_image(b64)
    assert image.format == "GIF" and image.size == (SIZE, SIZE), (image.format, image.size)
    return image.n_frames


def mp4_frames(b64: str, tmp_path: Path) -> list[np.ndarray]:
    path = tmp_path / f"svd-{time.monotonic_ns()}.mp4"
    path.write_bytes(base64.b64decode(b64))
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        assert reader.get_meta_data()["codec"] == "h264"
        return [frame for frame in reader]
    finally:
        reader.close()


def assert_plain_unchanged(server, after: str) -> None:
    body = server.generate("/sdapi/v1/txt2img", PLAIN)
    now = [np.asarray(decode_image(b).convert("RGB")) for b in body["images"]]
    fresh = [np.asarray(im.convert("RGB")) for im in server.fresh_plain]
    assert len(now) == len(fresh)
    for i, (a, b) in enumerate(zip(now, fresh, strict=True)):
        diff = np.abs(a.astype(np.int16) - b).max()
        assert np.array_equal(a, b), (
            f"plain txt2img after {after} differs from a fresh start (image {i}, max |Δ| = {diff})"
        )


def test_models_route_lists_the_default_svd_folder(svd_server):
    body = svd_server.get(ROUTE + "/models").json()
    assert body["models"] == ([SVD_NAME, SVD_XT_NAME] if svd_server.has_models else [])
    assert Path(body["folder"]) == svd_server.data_dir / "models" / "svd"


def test_svd_returns_a_gif_and_an_mp4_with_the_requested_frames(svd_models, tmp_path):
    body = svd_models.generate(ROUTE, svd_job())
    assert body["video_formats"] == ["GIF", "MP4"] and body["frames"] == []
    assert gif_frame_count(body["videos"][0]) == FRAMES
    frames = mp4_frames(body["videos"][1], tmp_path)
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    assert not body["interrupted"] and body["frame_count"] == FRAMES
    assert body["info"].startswith(
        f'SVD: "model: {SVD_NAME}, frames: {FRAMES}, width: {SIZE}, height: {SIZE}'
    )
    assert body["memory_plan"]
    folder = svd_models.data_dir / "outputs" / "img2img-images" / "AnimateDiff" / "svd"
    written = sorted(p.suffix for p in folder.glob("*/*-5.*"))
    assert written == [".gif", ".mp4"], list(folder.rglob("*"))
    assert_plain_unchanged(svd_models, "an SVD job")


def test_frames_0_gives_the_models_own_count(svd_models):
    body = svd_models.generate(ROUTE, svd_job(frames=0, formats=["GIF", "Frame"]))
    assert gif_frame_count(body["videos"][0]) == 14 and len(body["frames"]) == 14  # svd.safetensors: SVD, 14
    assert "frames: 14" in body["info"]


def test_bad_requests_are_422_naming_the_field(svd_server):
    response = svd_server.post(ROUTE, svd_job(model="svd_xxl.safetensors"))
    assert response.status_code == 422
    detail = response.json()["detail"]
    listed = f"{SVD_NAME}, {SVD_XT_NAME}" if svd_server.has_models else "available: none"
    assert "model = 'svd_xxl.safetensors'" in detail and listed in detail, detail
    body = svd_job()
    del body["image"]
    response = svd_server.post(ROUTE, body)
    assert response.status_code == 422 and "image is missing" in response.json()["detail"]
    response = svd_server.post(ROUTE, svd_job(width=100))
    assert response.status_code == 422 and "width = 100" in response.json()["detail"]


def test_interrupt_stops_the_job_early_and_the_webui_stays_unchanged(svd_models):
    """Also: the memory plan is on the progress line while the job samples, and logged once."""
    steps = 40
    result: dict = {}
    log_offset = svd_models.log_size()

    def run():
        result["response"] = svd_models.post(ROUTE, svd_job(steps=steps, seed=9))

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    reached = textinfo = None
    while time.monotonic() < started + 240 and worker.is_alive():
        progress = svd_models.get("/sdapi/v1/progress?skip_current_image=true").json()
        state = progress["state"]
        if (
            state.get("job") == "animatediff_svd"
            and state.get("sampling_steps") == steps
            and state.get("sampling_step", 0) >= 1
        ):
            reached, textinfo = state["sampling_step"], progress["textinfo"]
            break
        time.sleep(0.1)
    assert reached is not None, (
        f"the SVD job never showed a step on the progress bar:\n{svd_models.log_tail()}"
    )
    assert svd_models.post("/sdapi/v1/interrupt", {}, timeout=30).status_code == 200
    worker.join(timeout=240)
    assert not worker.is_alive(), "the SVD job did not stop within 240 s of the interrupt"
    response = result["response"]
    assert response.status_code == 200, response.text[:2000]
    body = response.json()
    assert body["interrupted"], body["info"]
    done = int(re.search(r"after step (\d+) of 40", body["info"]).group(1))
    assert reached <= done < steps
    assert gif_frame_count(body["videos"][0]) == FRAMES  # what it had is decoded and saved
    plan = body["memory_plan"]
    assert plan.startswith("SVD memory on cpu (offload on): weights ") and "peak about" in plan
    assert re.fullmatch(rf"SVD: step \d+/{steps}\. {re.escape(plan)}", textinfo), textinfo
    assert svd_models.log_since(log_offset).count(plan) == 1
    state = svd_models.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]
    assert state["job"] == "" and state["job_count"] == 0
    assert_plain_unchanged(svd_models, "an interrupted SVD job")
