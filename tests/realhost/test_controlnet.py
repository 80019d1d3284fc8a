"""Real host, ControlNet: video-to-video through sd-webui-controlnet v1.1.455 on a real WebUI.

The AnimateDiff panel's video (a file path or base64 data, a folder of frames, masks) becomes the
batch input of every enabled ControlNet unit without an input of its own; ControlNet then builds
one hint per frame, and the windowed denoiser hands each UNet call the hint rows of its frames.
Runs on its own server (``cn_server``: ControlNet linked into the private extensions/, a random
ControlNet for the tiny checkpoint in models/ControlNet, the probe of cn_probe_extension); skipped
with the reason when the WebUI checkout has no sd-webui-controlnet. Tiny jobs: 64×64, 2 steps;
the file takes ~45 s on 2 cores. ControlNet needs ``controlnet_aux`` in the WebUI's Python (it
runs with --skip-install, so install it there by hand, ``--no-deps``); videos are decoded with
imageio-ffmpeg there if present, else OpenCV.
"""

from __future__ import annotations

import base64
import itertools
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realhost_server import MM_NAME, PLAIN, decode_image, info_of, txt2img_job

pytestmark = pytest.mark.realhost

REPO = Path(__file__).resolve().parents[2]
VIDEO_FPS = 12
CONTEXT = 16
WINDOW_MODES = ("unet", "motion_module")  # whole-UNet windows; one UNet call, temporal windows (default)


# --- media made at test time -------------------------------------------------------------------------


def square_frame(i: int, size: int = 64) -> np.ndarray:
    """Frame ``i`` of the test clip: a white 16-pixel square on black, one pixel further right
    and half a pixel lower each frame (every frame of up to 40 differs)."""
    frame = np.zeros((size, size, 3), np.uint8)
    x, y = 4 + i % 44, 8 + (i // 2) % 40
    frame[y : y + 16, x : x + 16] = 255
    return frame


def write_mp4(path: Path, frames: int, fps: int = VIDEO_FPS, draw: bool = True) -> Path:
    """An H.264 MP4 of the moving square (``draw`` False: all black), through imageio's ffmpeg."""
    import imageio.v2 as imageio

    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=9, macro_block_size=16)
    try:
        for i in range(frames):
            writer.append_data(square_frame(i) if draw else np.zeros((64, 64, 3), np.uint8))
    finally:
        writer.close()
    return path


def write_frames(folder: Path, count: int, mask: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("L", (64, 64), 255) if mask else Image.fromarray(square_frame(i))
        image.save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def media(cn_server) -> dict[str, Path]:
    """Test inputs inside the server's data dir (requests may read only there)."""
    root = cn_server.media
    junk = root / "unreadable.mp4"
    junk.write_bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "empty").mkdir()
    return {
        "clip24": write_mp4(root / "square24.mp4", 24),
        "clip40": write_mp4(root / "square40.mp4", 40),
        "clip8": write_mp4(root / "square8.mp4", 8),
        "unreadable": junk,
        "empty": root / "empty",
        "masks3": write_frames(root / "masks3", 3, mask=True),
        "frames8": write_frames(root / "frames8", 8),
        "mask1": write_frames(root / "mask1", 1, mask=True),
    }


# --- jobs ---------------------------------------------------------------------------------------------


def cn_unit(server, **fields) -> dict:
    return {"enabled": True, "module": "none", "model": server.cn_model, "weight": 1.0, **fields}


def v2v_job(server, steps: int = 2, units: list[dict] | None = None, **ad_fields) -> dict:
    """txt2img with AnimateDiff (``ad_fields``; no fps key unless given) and ControlNet units
    (default: one enabled unit with no image of its own)."""
    return txt2img_job(
        seed=77,
        steps=steps,
        alwayson_scripts={
            "AnimateDiff": {"args": [{"enable": True, "model": MM_NAME, "format": ["GIF"], **ad_fields}]},
            "ControlNet": {"args": units if units is not None else [cn_unit(server)]},
        },
    )


def gif_of(body: dict) -> Image.Image:
    assert body["images"], "no images returned"
    gif = decode_image(body["images"][0])
    assert gif.format == "GIF", f"first API image is {gif.format}, expected the GIF"
    return gif


def gif_frames(gif: Image.Image) -> list[np.ndarray]:
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
    return frames


def durations(gif: Image.Image) -> list[int]:
    out = []
    for i in range(gif.n_frames):
        gif.seek(i)
        out.append(gif.info.get("duration"))
    return out


def mean_gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b, strict=True)]))


def record(server) -> dict:
    return server.get("/realhost/cn-record").json()


def reset_record(server) -> None:
    assert server.post("/realhost/cn-record/reset", {}).status_code == 200


def assert_plain_unchanged(server, after: str) -> None:
    body = server.generate("/sdapi/v1/txt2img", PLAIN)
    now = [np.asarray(decode_image(b).convert("RGB")) for b in body["images"]]
    fresh = [np.asarray(im.convert("RGB")) for im in server.fresh_plain]
    assert len(now) == len(fresh), f"plain txt2img after {after}: {len(now)} images, fresh {len(fresh)}"
    for i, (a, b) in enumerate(zip(now, fresh, strict=True)):
        assert np.array_equal(a, b), (
            f"plain txt2img after {after} differs from a fresh start (image {i}, "
            f"max |Δ| = {np.abs(a.astype(np.int16) - b).max()}): the WebUI was left changed"
        )


# --- 1. a video sets the frame count and fps ----------------------------------------------------------


@pytest.fixture(scope="module")
def square24(cn_server, media) -> dict:
    """The 24-frame clip as a path and as base64 data (same job otherwise), and the record of
    the first job."""
    reset_record(cn_server)
    offset = cn_server.log_size()
    by_path = cn_server.generate(
        "/sdapi/v1/txt2img", v2v_job(cn_server, video_source=str(media["clip24"]), video_length=0)
    )
    rec = record(cn_server)
    data = base64.b64encode(media["clip24"].read_bytes()).decode()
    by_data = cn_server.generate("/sdapi/v1/txt2img", v2v_job(cn_server, video_source=data, video_length=0))
    return {"path": by_path, "data": by_data, "record": rec, "log": cn_server.log_since(offset)}


def extracted_folders(log: str) -> list[str]:
    """The folders the extension extracted video frames into, from its log lines."""
    return re.findall(r"AnimateDiff: \d+ frames at [\d.]+ fps from .* into (\S+)", log)


def test_extracted_frames_are_removed_with_the_job(square24):
    folders = extracted_folders(square24["log"])
    assert len(folders) == 2, f"expected two extractions (path, base64 data):\n{square24['log'][-3000:]}"
    left = [f for f in folders if Path(f).exists() or Path(f).parent.exists()]
    assert not left, f"temporary frame folders left behind: {left}"


def test_controlnet_model_loads_with_every_key(cn_server, square24):
    """The random ControlNet is built at the tiny UNet's width, and its file has exactly the keys
    of the model ControlNet builds (ControlNet would ignore missing or unknown keys silently)."""
    loads = square24["record"]["loads"]
    assert loads, f"ControlNet never loaded a model: {square24['record']}\n{cn_server.log_tail()}"
    load = loads[-1]
    assert load["model_channels"] == 32, load
    assert load["missing"] == [] and load["unexpected"] == [], load
    assert square24["record"]["errors"] == [], square24["record"]["errors"]


@pytest.mark.parametrize("form", ["path", "data"])
def test_video_source_sets_frames_and_fps(square24, form):
    body = square24[form]
    gif = gif_of(body)
    assert gif.n_frames == 24, f"video_source as {form}: GIF has {gif.n_frames} frames, expected 24"
    assert gif.size == (64, 64)
    ms = durations(gif)
    # 12 fps is 83.3 ms a frame; GIF stores hundredths of a second: 80 or 90 ms
    assert all(d in (80, 90) for d in ms), f"video_source as {form}: frame durations {ms}, expected 80/90 ms"
    assert 80 <= sum(ms) / len(ms) <= 90, ms
    infotext = (info_of(body).get("infotexts") or [""])[0]
    assert "video_length: 24" in infotext and "fps: 12" in infotext, infotext


def test_requested_fps_wins_over_the_videos(cn_server, media):
    """An "fps" in the request is kept; the video still sets the frame count."""
    gif = gif_of(
        cn_server.generate("/sdapi/v1/txt2img", v2v_job(cn_server, video_source=str(media["clip8"]), fps=5))
    )
    assert gif.n_frames == 8, gif.n_frames
    assert set(durations(gif)) == {200}, f"fps 5 should give 200 ms frames, got {durations(gif)}"


def test_video_source_path_and_data_give_the_same_video(square24):
    gap = mean_gap(gif_frames(gif_of(square24["path"])), gif_frames(gif_of(square24["data"])))
    assert gap == 0.0, f"the same clip as a path and as base64 data gives different videos ({gap:.3f})"


def test_every_frame_gets_its_own_hint(square24):
    """ControlNet built one hint per frame (24 distinct rows, doubled for cond/uncond) and every
    UNet call got as many hint rows as it has rows."""
    rec = square24["record"]
    assert len(rec["hooks"]) == 1 and len(rec["hooks"][0]) == 1, rec["hooks"]
    full = rec["hooks"][0][0]
    assert full["hint_shape"][:2] == [48, 3], full["hint_shape"]
    rows = full["hint_rows"]
    assert rows[:24] == rows[24:], "cond and uncond hint rows differ"
    assert len(set(rows[:24])) == 24, "the 24 frames' hints are not all different"
    assert rec["calls"], "ControlNet's model was never called"
    for call in rec["calls"]:
        assert call["hint_shape"][0] == call["x_shape"][0], call


OTHER_SOURCES = {
    # name: (AnimateDiff fields, number of enabled units, frames expected, mask folder or None)
    "frame folder with one mask": (
        lambda m: {"video_path": str(m["frames8"]), "mask_path": str(m["mask1"])},
        1,
        8,
        "mask1",
    ),
    "first 6 frames of the clip": (
        lambda m: {"video_source": str(m["clip8"]), "video_length": 6},
        1,
        6,
        None,
    ),
    "two units share the clip": (lambda m: {"video_source": str(m["clip8"])}, 2, 8, None),
}


@pytest.mark.parametrize("case", list(OTHER_SOURCES))
def test_other_sources_reach_every_unit(cn_server, media, case):
    """A folder of frames (and masks), a shorter video_length, and two units without inputs:
    each unit gets one hint per generated frame, and the masks reach ControlNet."""
    fields, unit_count, frames, mask = OTHER_SOURCES[case]
    units = [cn_unit(cn_server, weight=1.0 - 0.5 * k) for k in range(unit_count)]
    reset_record(cn_server)
    offset = cn_server.log_size()
    gif = gif_of(cn_server.generate("/sdapi/v1/txt2img", v2v_job(cn_server, units=units, **fields(media))))
    assert gif.n_frames == frames, f"{case}: {gif.n_frames} frames, expected {frames}"
    hooks = record(cn_server)["hooks"]
    assert len(hooks) == 1 and [h["hint_shape"][0] for h in hooks[0]] == [2 * frames] * unit_count, hooks
    if mask is not None:
        log = cn_server.log_since(offset)
        assert f"batch control mask: {media[mask]}" in log, f"{case}: the masks never reached ControlNet"


# --- 2. windows get their frames' hints --------------------------------------------------------------


def expected_windows(frames: int, steps: int) -> list[tuple[int, ...]]:
    """The windows the denoiser runs, in order, as motion_module.window_schedule gives them for
    the defaults (context 16, overlap 4, loop R-P, stride 1)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from motion_module.params import WindowParams
    from motion_module.window_schedule import schedule

    params = WindowParams(context=CONTEXT)
    return [w for step in range(steps) for w in schedule(frames, step, params)]


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_windows_get_their_frames_hints(cn_server, media, mode):
    """40 frames, context 16: every UNet call gets the hint rows of exactly the frames it runs,
    for its cond rows and its uncond rows: in unet mode window after window as the schedule
    lists them; in motion_module mode (one UNet call a step holds every frame; ControlNet's
    model runs once on the call and its residuals join the UNet between blocks, outside the
    chunks of rows) every frame's hint in order, once per step."""
    steps = 2
    reset_record(cn_server)
    body = cn_server.generate(
        "/sdapi/v1/txt2img",
        v2v_job(
            cn_server,
            steps=steps,
            video_source=str(media["clip40"]),
            video_length=0,
            batch_size=CONTEXT,
            window_mode=mode,
        ),
    )
    assert gif_of(body).n_frames == 40
    rec = record(cn_server)
    assert rec["errors"] == [], rec["errors"]
    full = rec["hooks"][-1][0]
    assert full["hint_shape"][0] == 80, full["hint_shape"]
    frame_of = {fp: i for i, fp in enumerate(full["hint_rows"][:40])}
    assert len(frame_of) == 40, "the 40 frames' hints are not all different"
    assert full["hint_rows"][40:] == full["hint_rows"][:40], "cond and uncond hint rows differ"

    seen: list[tuple[int, ...]] = []
    for n, call in enumerate(rec["calls"]):
        cond = assert_window_hints(call, frame_of, n)
        if mode == "motion_module":
            assert cond == list(range(40)), f"call {n}: frames {cond}"
            continue
        assert len(cond) % CONTEXT == 0, f"call {n}: {len(cond)} frames is not whole windows"
        seen += [tuple(cond[k : k + CONTEXT]) for k in range(0, len(cond), CONTEXT)]
    if mode == "motion_module":
        assert len(rec["calls"]) == steps, f"{len(rec['calls'])} ControlNet calls for {steps} steps"
        return
    expected = expected_windows(40, steps)
    assert seen == expected, f"windows seen by ControlNet:\n{seen}\nexpected:\n{expected}"
    assert set(itertools.chain(*seen)) == set(range(40))


# --- 3. control changes the frames --------------------------------------------------------------------


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_control_changes_the_frames(cn_server, media, mode):
    """The clip through an enabled unit vs the same 24-frame, 12-fps job with the unit disabled
    (and so no video): far apart, while the same job twice (path vs base64 data) is identical.
    And the frames follow the video's content: a black clip of the same length gives others.
    (Measured here: ~16 levels mean per frame with vs without control, noise 0, in motion_module
    mode.)"""
    clip = media["clip24"]

    def video(source: str, units: list[dict] | None = None, **fields) -> list[np.ndarray]:
        job = v2v_job(cn_server, units=units, video_source=source, window_mode=mode, **fields)
        return gif_frames(gif_of(cn_server.generate("/sdapi/v1/txt2img", job)))

    controlled = video(str(clip), video_length=0)
    noise = mean_gap(controlled, video(base64.b64encode(clip.read_bytes()).decode(), video_length=0))
    job = v2v_job(
        cn_server, units=[cn_unit(cn_server, enabled=False)], video_length=24, fps=12, window_mode=mode
    )
    free = gif_frames(gif_of(cn_server.generate("/sdapi/v1/txt2img", job)))
    effect = mean_gap(controlled, free)
    black = write_mp4(cn_server.media / f"black24-{mode}.mp4", 24, draw=False)
    content = mean_gap(controlled, video(str(black)))
    print(
        f"{mode}: control effect {effect:.2f}, black clip vs square clip {content:.2f}, noise {noise:.2f} (levels)"
    )
    assert effect >= 3.0 and effect > 10 * noise + 1.0, (
        f"ControlNet barely changes the frames: {effect:.2f} levels mean (noise {noise:.2f})"
    )
    assert content >= 1.0 and content > 10 * noise, (
        f"the frames hardly depend on the video's content: {content:.2f} levels mean (noise {noise:.2f})"
    )


# --- 4. hires fix ------------------------------------------------------------------------------------


def assert_window_hints(call: dict, frame_of: dict[str, int], n: int, marked: bool = True) -> list[int]:
    """One UNet call's hint rows: as many as its latent rows, each a frame's hint, the cond rows
    (first half) holding the same frames in the same order as the uncond rows (second half).
    ``marked``: ControlNet found its cond/uncond marker and agrees on which rows are which (it
    marks the hires conds only when they exist before sampling starts, so not in the hires pass
    by default: it then treats every row as cond, AnimateDiff or not). Returns the frames."""
    rows = call["x_shape"][0]
    assert call["hint_shape"][0] == rows, f"call {n}: {rows} latent rows, {call['hint_shape'][0]} hint rows"
    frames = [frame_of.get(fp) for fp in call["hint_rows"]]
    assert None not in frames, f"call {n}: a hint row that is no frame's hint"
    half = rows // 2
    if marked:
        assert call["c_indices"] == list(range(half)), (n, call["c_indices"])
        assert call["uc_indices"] == list(range(half, rows)), (n, call["uc_indices"])
    cond, uncond = frames[:half], frames[half:]
    assert cond == uncond, f"call {n}: cond rows have frames {cond}, uncond rows {uncond}"
    return cond


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_hires_fix_with_the_video(cn_server, media, mode):
    """Hires fix on an 8-frame clip with context 6, so both passes run in windows: a 128×128
    video of 8 frames, and every hires call gets the hires hints of its window's frames (in
    motion_module mode every call holds all 8 frames, in order)."""
    reset_record(cn_server)
    job = v2v_job(cn_server, video_source=str(media["clip8"]), video_length=0, batch_size=6, window_mode=mode)
    job.update(
        enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5
    )
    gif = gif_of(cn_server.generate("/sdapi/v1/txt2img", job))
    assert gif.n_frames == 8 and gif.size == (128, 128), (gif.n_frames, gif.size)
    rec = record(cn_server)
    assert rec["errors"] == [], rec["errors"]
    full = rec["hooks"][-1][0]
    assert full["hint_shape"] == [16, 3, 64, 64] and full["hr_hint_shape"] == [16, 3, 128, 128], full
    low = {fp: i for i, fp in enumerate(full["hint_rows"][:8])}
    high = {fp: i for i, fp in enumerate(full["hr_hint_rows"][:8])}
    assert len(low) == len(high) == 8, "the 8 frames' hints are not all different"
    passes = {64: [], 128: []}
    for n, call in enumerate(rec["calls"]):
        size = call["hint_shape"][2]
        assert call["x_shape"][2] * 8 == size, (
            f"call {n}: {call['hint_shape']} hint for latents {call['x_shape']}"
        )
        frames = assert_window_hints(call, low if size == 64 else high, n, marked=size == 64)
        if mode == "motion_module":
            assert frames == list(range(8)), f"call {n}: frames {frames}"
        else:
            assert call["x_shape"][0] % 12 == 0, (
                f"call {n}: {call['x_shape'][0]} rows, not 2 × 6-frame windows"
            )
        passes[size].append(frames)
    assert passes[64] and passes[128], f"calls per pass: { {k: len(v) for k, v in passes.items()} }"
    for size, windows in passes.items():
        assert set(itertools.chain(*windows)) == set(range(8)), f"{size}px pass: frames {windows}"


# --- 5. bad inputs ------------------------------------------------------------------------------------

BAD_INPUTS = {
    "unreadable video": ("video_source", lambda m, s: {"video_source": str(m["unreadable"])}, None),
    "empty frame folder": ("video_path", lambda m, s: {"video_path": str(m["empty"])}, None),
    "3 masks for 24 frames": (
        "mask_path",
        lambda m, s: {"video_source": str(m["clip24"]), "mask_path": str(m["masks3"])},
        None,
    ),
    "video_length beyond the video": (
        "video_length",
        lambda m, s: {"video_source": str(m["clip24"]), "video_length": 30},
        None,
    ),
    "every unit disabled": (
        "video_source",
        lambda m, s: {"video_source": str(m["clip24"])},
        lambda s: [cn_unit(s, enabled=False)],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_the_field_named(cn_server, media, case):
    field, fields, units = BAD_INPUTS[case]
    job = v2v_job(cn_server, units=units(cn_server) if units else None, **fields(media, cn_server))
    offset = cn_server.log_size()
    response = cn_server.post("/sdapi/v1/txt2img", job)
    left = [f for f in extracted_folders(cn_server.log_since(offset)) if Path(f).parent.exists()]
    assert not left, f"{case}: temporary frame folders left behind: {left}"
    assert response.status_code == 422, f"{case}: HTTP {response.status_code}: {response.text[:1500]}"
    assert field in response.text, f"{case}: the answer does not name {field}: {response.text[:1500]}"
    assert_plain_unchanged(cn_server, f"a refused job ({case})")
