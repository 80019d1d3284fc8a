"""Real host, FP8 weight storage: the motion module follows the WebUI's FP8 storage and motion
LoRAs still apply to it.

A request's ``override_settings`` switch FP8 storage on; the WebUI applies that by reloading its
weights into the same model, walking every module, at the start of the first batch, so it must
happen before the motion module goes in. The WebUI keeps FP8 on afterwards (it restores only
settings present in config.json, and its reload back from FP8 gives this tiny checkpoint NaNs
on a CPU), so the reference for "the WebUI is as it was" is a plain FP8 job on a second server
that never ran AnimateDiff.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import start_server
from realhost_server import MOTION_LORA, PLAIN, decode_image, info_of
from test_api import MOTION_LORA_LAYERS, ad_job, frames_of, mean_gap, pixels

pytestmark = pytest.mark.realhost
PLAIN_FP8 = dict(PLAIN, override_settings={"fp8_storage": "Enable"})


def plain_fp8(server) -> list[np.ndarray]:
    return pixels([decode_image(b) for b in server.generate("/sdapi/v1/txt2img", PLAIN_FP8)["images"]])


@pytest.fixture(scope="module")
def fp8_reference(realhost_root, checkpoint, motion_module_dir) -> list[np.ndarray]:
    """The plain job in FP8 on a server that never ran AnimateDiff (second FP8 job: no reload)."""
    server = start_server(realhost_root, "data-fp8-reference", checkpoint, motion_module_dir, api_only=True)
    try:
        plain_fp8(server)
        return plain_fp8(server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fp8_server(realhost_root, checkpoint, motion_module_dir, motion_lora_dir):
    server = start_server(
        realhost_root, "data-fp8", checkpoint, motion_module_dir, api_only=True, lora_dir=motion_lora_dir
    )
    try:
        yield server
    finally:
        server.stop()


def fp8_video(server, tag: str = "") -> tuple[list[np.ndarray], dict]:
    job = ad_job(8, batch_size=8, format=["GIF", "Frame"])
    job.update(prompt=job["prompt"] + tag, override_settings=PLAIN_FP8["override_settings"])
    body = server.generate("/sdapi/v1/txt2img", job)
    assert "FP8 weight: Enable" in info_of(body)["infotexts"][0]
    frames = [f.astype(np.int16) for f in frames_of(body, 8)]
    return frames, server.get("/realhost/loaded-networks").json()


def test_motion_lora_applies_while_weights_are_stored_in_fp8(fp8_server, fp8_reference):
    """The first job switches FP8 on: the WebUI reloads its weights before the motion module
    goes in, whose Linear weights are then stored in FP8 too; a motion LoRA reaches all of them
    (weight 1 changes the video, weight 0 and the next job without it do not); afterwards a
    plain FP8 job is the one a server without AnimateDiff makes."""
    offset = fp8_server.log_size()
    plain, _ = fp8_video(fp8_server)
    log = fp8_server.log_since(offset)
    assert "Linear weights stored in torch.float8_e4m3fn" in log, log[-3000:]
    assert log.index("reloading its weights first") < log.index("Weights loaded") < log.index("injected"), log
    with_lora, loaded = fp8_video(fp8_server, f"<lora:{MOTION_LORA}:1>")
    assert len(loaded[MOTION_LORA]["layers"]) == MOTION_LORA_LAYERS, loaded
    effect = mean_gap(with_lora, plain)
    assert effect > 1.0, f"the motion LoRA barely changes the FP8 video ({effect:.2f} levels)"
    at_zero, _ = fp8_video(fp8_server, f"<lora:{MOTION_LORA}:0>")
    assert mean_gap(at_zero, plain) == 0.0
    again, _ = fp8_video(fp8_server)
    assert mean_gap(again, plain) == 0.0, "the motion LoRA stayed in the FP8 motion module"
    now = plain_fp8(fp8_server)
    assert all(np.array_equal(a, b) for a, b in zip(now, fp8_reference, strict=True))
