"""Real host, ControlNet IP-Adapter with AnimateDiff: one image embedding for every frame, and
IP-Adapter keyframes travelling across windows.

Runs on the ControlNet tier's server (``cn_server``): a random IP-Adapter in the ip-adapter_sd15
layout sized to the tiny checkpoint's UNet sits in models/ControlNet, and the probe
(cn_probe_extension) builds ControlNet's CLIP ViT-H image encoder as a tiny seeded tower and
records the IP-Adapter's image embedding at its hook and at every attention layer's
evaluation. 64×64, 2 steps, 24 frames with context 16 (two windows per step). Each test runs in
both window modes: ``unet`` (each UNet call holds whole windows) and ``motion_module`` (the
default: one UNet call holds every frame, its per-frame layers run over chunks of at most the
frame budget's rows, and the IP-Adapter's attention must see each chunk's rows).
"""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
import pytest
from PIL import Image
from realhost_server import decode_image
from test_controlnet import (
    CONTEXT,
    assert_plain_unchanged,
    expected_windows,
    gif_frames,
    gif_of,
    mean_gap,
    record,
    reset_record,
    v2v_job,
)

pytestmark = pytest.mark.realhost

FRAMES = 24
KEYFRAMES = (0, 8, 16, 23)
CLIP_DIM = 32  # the probe's tiny CLIP tower (and the tier's IP-Adapter) embed images 32 wide
WINDOW_MODES = ("unet", "motion_module")
BUDGET = 32  # the default frame budget: rows per chunk of per-frame layers in motion_module mode
LAYERS = 16  # IP-Adapter attention layers of an SD1.5 UNet


def ip_unit(server, **fields) -> dict:
    return {
        "enabled": True,
        "module": "ip-adapter_clip_sd15",
        "model": server.ip_adapter_model,
        "weight": 1.0,
        **fields,
    }


def embedding_b64(seed: int) -> str:
    """A CLIP image embedding as ControlNet's ``ipadapter_input`` takes it: the preprocessor's
    output (a dict with ``image_embeds``), ``torch.save``d and base64-encoded."""
    import torch

    embeds = torch.randn(1, CLIP_DIM, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    torch.save({"image_embeds": embeds}, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def video_of(server, units: list[dict], **ad_fields) -> list[np.ndarray]:
    job = v2v_job(server, units=units, video_length=FRAMES, batch_size=CONTEXT, **ad_fields)
    gif = gif_of(server.generate("/sdapi/v1/txt2img", job))
    assert gif.n_frames == FRAMES, gif.n_frames
    return gif_frames(gif)


def frames_of(server, units: list[dict], **ad_fields) -> list[np.ndarray]:
    """The job's frames as the WebUI made them (8-bit RGB, no GIF palette): for comparisons to
    float rounding, where a palette built from slightly different frames could move a pixel to
    a far colour."""
    job = v2v_job(
        server, units=units, video_length=FRAMES, batch_size=CONTEXT, format=["GIF", "Frame"], **ad_fields
    )
    images = server.generate("/sdapi/v1/txt2img", job)["images"]  # GIF, frames, ControlNet's own
    assert len(images) >= 1 + FRAMES, len(images)
    return [np.asarray(decode_image(b).convert("RGB"), dtype=np.int16) for b in images[1 : 1 + FRAMES]]


# --- one embedding for every frame --------------------------------------------------------------------


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_one_embedding_reaches_every_window(cn_server, mode):
    """``ipadapter_input`` (an embedding, no image) on a 24-frame job in 16-frame windows: every
    attention evaluation in every UNet call (whole windows, or chunks of rows in motion_module
    mode) sees the one shared embedding row with its rows' cond marks, the frames differ from
    the same job without the unit (the same job twice is identical), and a plain txt2img
    afterwards is pixel-identical to one from a fresh start. (Measured: ~31 levels mean with vs
    without the unit, ~31 between two embeddings, noise 0, in unet mode.)"""
    unit = ip_unit(cn_server, ipadapter_input=[embedding_b64(1)])
    reset_record(cn_server)
    with_ip = video_of(cn_server, [unit], window_mode=mode)
    rec = record(cn_server)
    assert rec["errors"] == [], rec["errors"][:5]
    assert len(rec["ip_hooks"]) == 1, rec["ip_hooks"]
    hooked = rec["ip_hooks"][0]
    assert len(hooked["cond_rows"]) == 1 and len(hooked["uncond_rows"]) == 1, hooked
    assert rec["ip_evals"], "the IP-Adapter's attention layers never ran"
    for entry in rec["ip_evals"]:
        assert entry["cond_rows"] == hooked["cond_rows"], entry
    assert_calls_get_their_rows(rec["ip_evals"], None, mode, steps=2)

    again = video_of(cn_server, [unit], window_mode=mode)
    noise = mean_gap(with_ip, again)
    without = video_of(cn_server, [ip_unit(cn_server, enabled=False)], window_mode=mode)
    other = video_of(cn_server, [ip_unit(cn_server, ipadapter_input=[embedding_b64(2)])], window_mode=mode)
    effect, content = mean_gap(with_ip, without), mean_gap(with_ip, other)
    print(
        f"{mode}: IP-Adapter effect {effect:.2f}, other embedding {content:.2f}, noise {noise:.2f} (levels)"
    )
    assert noise == 0.0, f"the same IP-Adapter job twice differs by {noise:.3f} levels"
    assert effect >= 2.0, f"the IP-Adapter barely changes the frames: {effect:.2f} levels mean"
    assert content >= 1.0, f"the frames hardly depend on the embedding: {content:.2f} levels mean"
    assert_plain_unchanged(cn_server, "IP-Adapter jobs")


# --- keyframes ----------------------------------------------------------------------------------------


def write_keyframe_images(folder, count: int):
    """``count`` plain images of different colours (one per keyframe)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    for i in range(count):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return folder


def calls_of(evals: list[dict]) -> list[list[dict]]:
    """The probe's evaluations grouped by UNet call, then by the rows they covered (a call in
    unet mode is one group; in motion_module mode one group per chunk of rows), in the order the
    groups first ran; each group with the number of attention layers that evaluated it."""
    calls: dict[int, dict[tuple, dict]] = {}
    for entry in evals:
        key = (tuple(entry["cond_rows"]), tuple(entry["marks"]))
        group = calls.setdefault(entry["call"], {}).setdefault(key, {**entry, "layers": 0})
        group["layers"] += entry["layers"]
    return [list(groups.values()) for groups in calls.values()]


def assert_calls_get_their_rows(evals: list[dict], rows: list[str] | None, mode: str, steps: int) -> None:
    """Every attention layer (all 16) evaluated the embedding against exactly the rows it ran:
    in each UNet call, group after group (whole windows in unet mode; chunks of at most the frame
    budget's rows in motion_module mode), the marks say cond for the first half of the call's
    rows and uncond for the second, and with ``rows`` (one embedding row per frame) the rows of
    each group are its frames', the uncond half holding the same frames as the cond half. The
    calls' frames are the schedule's windows (unet) or every frame once per step
    (motion_module)."""
    frame_of = {fp: i for i, fp in enumerate(rows or [])}
    seen: list[tuple[int, ...]] = []
    calls = calls_of(evals)
    for n, groups in enumerate(calls):
        marks, frames = [], []
        for group in groups:
            assert group["layers"] == LAYERS, f"call {n}: rows reached {group['layers']} of {LAYERS} layers"
            assert len(group["marks"]) == group["call_rows"], group
            if mode == "motion_module":
                assert group["call_rows"] <= BUDGET, f"call {n}: a chunk of {group['call_rows']} rows"
            marks += group["marks"]
            if rows is not None:
                assert len(group["cond_rows"]) == group["call_rows"], f"call {n}: {group}"
                frames += [frame_of.get(fp) for fp in group["cond_rows"]]
        half = len(marks) // 2
        assert marks == [1] * half + [0] * half, f"call {n}: cond marks {marks}"
        if mode == "motion_module":
            assert half == FRAMES and len(groups) == -(-2 * FRAMES // BUDGET), (n, half, len(groups))
        else:
            assert len(groups) == 1 and half % CONTEXT == 0, (n, half, len(groups))
        if rows is None:
            continue
        assert None not in frames, f"call {n}: an embedding row that is no frame's"
        assert frames[:half] == frames[half:], f"call {n}: cond {frames[:half]} vs uncond {frames[half:]}"
        if mode == "motion_module":
            assert frames[:half] == list(range(FRAMES)), f"call {n}: frames {frames[:half]}"
        else:
            seen += [tuple(frames[k : k + CONTEXT]) for k in range(0, half, CONTEXT)]
    if mode == "motion_module":
        assert len(calls) == steps, f"{len(calls)} UNet calls for {steps} steps"
    elif rows is not None:
        expected = expected_windows(FRAMES, steps)
        assert seen == expected, f"windows seen by the IP-Adapter:\n{seen}\nexpected:\n{expected}"
        assert set(itertools.chain(*seen)) == set(range(FRAMES))


def run_batch_unit(
    server, name: str, images: int, mode: str, keyframes: tuple[int, ...] = (), **ad_fields
) -> tuple[dict, list[str]]:
    """A 24-frame job in 16-frame windows (``mode``) with one IP-Adapter unit in batch mode over
    ``images`` new images (and a ``keyframe:`` line when ``keyframes``). Returns the probe's
    record and the embedding rows the adapter was hooked with: one per frame, cond block then
    uncond block (checked)."""
    folder = write_keyframe_images(server.media / name, images)
    batch = f"{folder}\nkeyframe:{','.join(map(str, keyframes))}" if keyframes else str(folder)
    reset_record(server)
    video_of(server, [ip_unit(server, input_mode="batch", batch_images=batch)], window_mode=mode, **ad_fields)
    rec = record(server)
    assert rec["errors"] == [], rec["errors"][:5]
    assert len(rec["ip_hooks"]) == 1, rec["ip_hooks"]
    rows = rec["ip_hooks"][0]["cond_rows"]
    assert len(rows) == 2 * FRAMES, f"{len(rows)} embedding rows, expected one per frame for cond and uncond"
    assert rows[:FRAMES] == rows[FRAMES:], "cond and uncond blocks hold different frames"
    return rec, rows[:FRAMES]


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_keyframe_embeddings_reach_each_window_sliced(cn_server, mode):
    """A batch-mode IP-Adapter unit with four images and ``keyframe:0,8,16,23`` on 24 frames in
    16-frame windows: ControlNet encodes the four images, travels them over the frames with our
    prompt scheduler (one row per frame, cond block then uncond block), and every UNet call's
    IP-Adapter layers get exactly the rows of that call's window frames, window after window as
    the schedule lists them. Each keyframe's row is exactly its image's embedding (travel is
    exact at keyframes); the rows in between are new (interpolated). In motion_module mode each
    chunk of rows gets its rows."""
    rec, rows = run_batch_unit(cn_server, f"ip-keyframes-{mode}", len(KEYFRAMES), mode, KEYFRAMES)
    assert len(set(rows)) == FRAMES, "the travelled embedding does not differ frame by frame"
    encodings = [e["cond_rows"] for e in rec["ip_encodings"]]
    assert [len(e) for e in encodings] == [1] * len(KEYFRAMES), encodings
    assert [rows[k] for k in KEYFRAMES] == [e[0] for e in encodings], "keyframe rows are not their images'"
    assert_calls_get_their_rows(rec["ip_evals"], rows, mode, steps=2)
    assert_plain_unchanged(cn_server, "an IP-Adapter keyframe job")


@pytest.mark.parametrize("mode", WINDOW_MODES)
def test_one_image_per_frame_reaches_each_window_sliced(cn_server, mode):
    """A batch-mode IP-Adapter unit with one image for each of the 24 frames (no keyframe line):
    frame k's row is exactly image k's embedding, repeated for the uncond rows (ControlNet leaves
    one row per frame; the WebUI runs cond and uncond in one call), and each UNet call gets its
    windows' rows (each chunk its rows in motion_module mode); the WebUI stays as it was."""
    rec, rows = run_batch_unit(cn_server, f"ip-per-frame-{mode}", FRAMES, mode)
    assert rows == [e["cond_rows"][0] for e in rec["ip_encodings"]], "rows are not the images'"
    assert_calls_get_their_rows(rec["ip_evals"], rows, mode, steps=2)
    assert_plain_unchanged(cn_server, "an IP-Adapter job with one image per frame")


# --- motion_module mode: chunks, hires fix, closed loop --------------------------------------------


@pytest.fixture
def frame_budget(cn_server):
    """Set the frame budget setting for the test (its default back afterwards)."""

    def set_budget(frames: int) -> None:
        response = cn_server.post("/sdapi/v1/options", {"animatediff_frame_budget": frames})
        assert response.status_code == 200, response.text[:500]

    try:
        yield set_budget
    finally:
        set_budget(BUDGET)


def test_chunked_rows_give_the_unchunked_result(cn_server, frame_budget):
    """motion_module mode with IP-Adapter keyframes (one embedding row per frame): per-frame
    layers over chunks of 32 rows (the default budget) give the frames of the same job whose
    layers see all 48 rows at once (budget 0), to float rounding. (Without each chunk getting
    its rows, every chunk's attention took all 48 rows as more tokens: 25 levels mean, 255 max.)
    The frames are compared as the WebUI made them: the GIFs' palettes, built from frames that
    differ by rounding, once moved a pixel by 51 levels while the mean gap was 0.009."""
    folder = write_keyframe_images(cn_server.media / "ip-chunks", len(KEYFRAMES))
    unit = ip_unit(cn_server, input_mode="batch", batch_images=f"{folder}\nkeyframe:0,8,16,23")
    videos = {}
    for budget in (BUDGET, 0):
        frame_budget(budget)
        reset_record(cn_server)
        videos[budget] = frames_of(cn_server, [unit], window_mode="motion_module")
        rec = record(cn_server)
        assert rec["errors"] == [], rec["errors"][:5]
        widest = max(e["call_rows"] for e in rec["ip_evals"])
        assert widest == (BUDGET if budget else 2 * FRAMES), (budget, widest)
    without = frames_of(cn_server, [ip_unit(cn_server, enabled=False)], window_mode="motion_module")
    gap = mean_gap(videos[BUDGET], videos[0])
    worst = max(int(np.abs(a - b).max()) for a, b in zip(videos[BUDGET], videos[0], strict=True))
    effect = mean_gap(videos[0], without)
    print(f"chunked vs unchunked: {gap:.4f} levels mean, {worst} max; IP-Adapter effect {effect:.2f}")
    assert effect >= 2.0, f"the IP-Adapter barely changes the frames: {effect:.2f}"
    assert gap <= 0.05 and worst <= 2, f"chunked and unchunked differ: {gap:.4f} mean, {worst} max levels"


def test_hires_fix_with_one_embedding(cn_server):
    """Hires fix (2×, latent upscale) with one shared embedding in motion_module mode: both
    passes run every frame in one UNet call a step, with chunks of rows, and every attention
    evaluation in both passes gets as many rows as its chunk, of at most the budget; a 128×128
    video of 24 frames; the WebUI stays as it was."""
    unit = ip_unit(cn_server, ipadapter_input=[embedding_b64(1)])
    job = v2v_job(
        cn_server, units=[unit], video_length=FRAMES, batch_size=CONTEXT, window_mode="motion_module"
    )
    job.update(
        enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5
    )
    reset_record(cn_server)
    gif = gif_of(cn_server.generate("/sdapi/v1/txt2img", job))
    assert gif.n_frames == FRAMES and gif.size == (128, 128), (gif.n_frames, gif.size)
    rec = record(cn_server)
    assert rec["errors"] == [], rec["errors"][:5]
    calls = calls_of(rec["ip_evals"])
    assert len(calls) >= 3, (
        f"{len(calls)} UNet calls with the IP-Adapter; expected 2 steps and the hires pass's"
    )
    for n, groups in enumerate(calls):
        assert sum(g["call_rows"] for g in groups) == 2 * FRAMES, (n, [g["call_rows"] for g in groups])
        for group in groups:
            assert group["call_rows"] <= BUDGET and group["layers"] == LAYERS, (n, group)
            assert group["cond_rows"] == rec["ip_hooks"][0]["cond_rows"], (n, group)
    assert_plain_unchanged(cn_server, "an IP-Adapter job with hires fix")


def test_closed_loop_keyframes_travel_back_in_motion_module_mode(cn_server):
    """closed_loop R+P with keyframes 0, 8, 16 on 24 frames: ControlNet travels the frames after
    the last keyframe back towards the first (every row differs; R-P holds frames 16-23 at the
    last keyframe's), and in motion_module mode every chunk of rows gets its rows."""
    keyframes = (0, 8, 16)
    rec, rows = run_batch_unit(
        cn_server, "ip-loop", len(keyframes), "motion_module", keyframes, closed_loop="R+P"
    )
    assert len(set(rows)) == FRAMES, "frames after the last keyframe do not travel back"
    assert_calls_get_their_rows(rec["ip_evals"], rows, "motion_module", steps=2)
    _rec, held = run_batch_unit(
        cn_server, "ip-noloop", len(keyframes), "motion_module", keyframes, closed_loop="R-P"
    )
    assert len(set(held[16:])) == 1 and held[:16] == rows[:16], "R-P should hold the last keyframe"
