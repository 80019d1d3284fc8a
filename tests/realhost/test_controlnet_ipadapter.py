"""Real host, ControlNet IP-Adapter with AnimateDiff: one image embedding for every frame, and
IP-Adapter keyframes travelling across windows.

Runs on the ControlNet tier's server (``cn_server``): a random IP-Adapter in the ip-adapter_sd15
layout sized to the tiny checkpoint's UNet sits in models/ControlNet, and the probe
(cn_probe_extension) builds ControlNet's CLIP ViT-H image encoder as a tiny seeded tower and
records the IP-Adapter's image embedding at its hook and at every UNet call. 64×64, 2 steps,
24 frames with context 16 (two windows per step).
"""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
import pytest
from PIL import Image
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


# --- one embedding for every frame --------------------------------------------------------------------


def test_one_embedding_reaches_every_window(cn_server):
    """``ipadapter_input`` (an embedding, no image) on a 24-frame job in 16-frame windows: every
    UNet call's IP-Adapter layers see the one shared embedding row, the frames differ from the
    same job without the unit (the same job twice is identical), and a plain txt2img afterwards
    is pixel-identical to one from a fresh start. (Measured: ~31 levels mean with vs without the
    unit, ~31 between two embeddings, noise 0.)"""
    unit = ip_unit(cn_server, ipadapter_input=[embedding_b64(1)])
    reset_record(cn_server)
    with_ip = video_of(cn_server, [unit], window_mode="unet")
    rec = record(cn_server)
    assert rec["errors"] == [], rec["errors"]
    assert len(rec["ip_hooks"]) == 1, rec["ip_hooks"]
    hooked = rec["ip_hooks"][0]
    assert len(hooked["cond_rows"]) == 1 and len(hooked["uncond_rows"]) == 1, hooked
    evals = rec["ip_evals"]
    assert evals, "the IP-Adapter's attention layers never ran"
    for entry in evals:
        assert entry["cond_rows"] == hooked["cond_rows"], entry
    calls = {e["call_rows"] for e in evals}  # a call may hold several windows
    assert calls and all(rows % (2 * CONTEXT) == 0 for rows in calls), calls

    again = video_of(cn_server, [unit], window_mode="unet")
    noise = mean_gap(with_ip, again)
    without = video_of(cn_server, [ip_unit(cn_server, enabled=False)], window_mode="unet")
    other = video_of(cn_server, [ip_unit(cn_server, ipadapter_input=[embedding_b64(2)])], window_mode="unet")
    effect, content = mean_gap(with_ip, without), mean_gap(with_ip, other)
    print(f"IP-Adapter effect {effect:.2f}, other embedding {content:.2f}, noise {noise:.2f} (levels)")
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


def assert_windows_get_their_rows(evals: list[dict], rows: list[str], steps: int) -> None:
    """Every UNet call's IP-Adapter layers (all 16) got, for its cond rows and again for its
    uncond rows, the embedding rows (``rows``: one per frame) of its windows' frames, window
    after window as the schedule lists them, and every frame was run."""
    frame_of = {fp: i for i, fp in enumerate(rows)}
    seen = []
    for n, entry in enumerate(evals):
        frames = [frame_of.get(fp) for fp in entry["cond_rows"]]
        assert None not in frames, f"call {n}: an embedding row that is no frame's"
        assert len(frames) == entry["call_rows"], f"call {n}: {len(frames)} rows for {entry['call_rows']}"
        half = len(frames) // 2
        assert frames[:half] == frames[half:], f"call {n}: cond {frames[:half]} vs uncond {frames[half:]}"
        assert entry["layers"] == 16, f"call {n}: the embedding reached {entry['layers']} of 16 layers"
        seen += [tuple(frames[k : k + CONTEXT]) for k in range(0, half, CONTEXT)]
    expected = expected_windows(FRAMES, steps)
    assert seen == expected, f"windows seen by the IP-Adapter:\n{seen}\nexpected:\n{expected}"
    assert set(itertools.chain(*seen)) == set(range(FRAMES))


def run_batch_unit(server, name: str, images: int, keyframes: tuple[int, ...] = ()) -> tuple[dict, list[str]]:
    """A 24-frame job in 16-frame UNet windows with one IP-Adapter unit in batch mode over
    ``images`` new images (and a ``keyframe:`` line when ``keyframes``). Returns the probe's
    record and the embedding rows the adapter was hooked with: one per frame, cond block then
    uncond block (checked)."""
    folder = write_keyframe_images(server.media / name, images)
    batch = f"{folder}\nkeyframe:{','.join(map(str, keyframes))}" if keyframes else str(folder)
    reset_record(server)
    video_of(server, [ip_unit(server, input_mode="batch", batch_images=batch)], window_mode="unet")
    rec = record(server)
    assert rec["errors"] == [], rec["errors"]
    assert len(rec["ip_hooks"]) == 1, rec["ip_hooks"]
    rows = rec["ip_hooks"][0]["cond_rows"]
    assert len(rows) == 2 * FRAMES, f"{len(rows)} embedding rows, expected one per frame for cond and uncond"
    assert rows[:FRAMES] == rows[FRAMES:], "cond and uncond blocks hold different frames"
    return rec, rows[:FRAMES]


def test_keyframe_embeddings_reach_each_window_sliced(cn_server):
    """A batch-mode IP-Adapter unit with four images and ``keyframe:0,8,16,23`` on 24 frames in
    16-frame windows: ControlNet encodes the four images, travels them over the frames with our
    prompt scheduler (one row per frame, cond block then uncond block), and every UNet call's
    IP-Adapter layers get exactly the rows of that call's window frames, window after window as
    the schedule lists them. Each keyframe's row is exactly its image's embedding (travel is
    exact at keyframes); the rows in between are new (interpolated)."""
    rec, rows = run_batch_unit(cn_server, "ip-keyframes", len(KEYFRAMES), KEYFRAMES)
    assert len(set(rows)) == FRAMES, "the travelled embedding does not differ frame by frame"
    encodings = [e["cond_rows"] for e in rec["ip_encodings"]]
    assert [len(e) for e in encodings] == [1] * len(KEYFRAMES), encodings
    assert [rows[k] for k in KEYFRAMES] == [e[0] for e in encodings], "keyframe rows are not their images'"
    assert_windows_get_their_rows(rec["ip_evals"], rows, steps=2)
    assert_plain_unchanged(cn_server, "an IP-Adapter keyframe job")


def test_one_image_per_frame_reaches_each_window_sliced(cn_server):
    """A batch-mode IP-Adapter unit with one image for each of the 24 frames (no keyframe line):
    frame k's row is exactly image k's embedding, repeated for the uncond rows (ControlNet leaves
    one row per frame; the WebUI runs cond and uncond in one call), and each UNet call gets its
    windows' rows; the WebUI stays as it was."""
    rec, rows = run_batch_unit(cn_server, "ip-per-frame", FRAMES)
    assert rows == [e["cond_rows"][0] for e in rec["ip_encodings"]], "rows are not the images'"
    assert_windows_get_their_rows(rec["ip_evals"], rows, steps=2)
    assert_plain_unchanged(cn_server, "an IP-Adapter job with one image per frame")
