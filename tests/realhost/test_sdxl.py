"""Real host, SDXL: AnimateDiff SDXL beta and HotShot-XL on the WebUI's sgm UNet.

A tiny random SDXL checkpoint (sgm layout, scaled-down sd_xl_base.yaml beside it) and random
SDXL modules are made at test time. Every job must leave the WebUI as a fresh start finds it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HOTSHOT, SD15_IN_SDXL_FOLDER, SDXL_BETA, SDXL_MOTION_LORA
from PIL import Image
from realhost_server import encode_image
from test_api import ad_job, assert_plain_unchanged, assert_video, frames_of, gif_frames, mean_gap, pixels

pytestmark = pytest.mark.realhost


def xl_job(frames: int, model: str = SDXL_BETA, steps: int = 2, **fields) -> dict:
    return ad_job(frames, steps=steps, model=model, **fields)


def test_the_webui_loads_the_tiny_checkpoint_as_sdxl(sdxl_server, sdxl_checkpoint):
    """The WebUI takes the yaml beside the file; its own keys say SDXL too (the key the WebUI
    guesses SDXL by without a yaml, and a middle-block transformer, which SSD-1B lacks)."""
    from safetensors import safe_open

    with safe_open(str(sdxl_checkpoint), framework="pt") as f:
        keys = set(f.keys())
    assert "conditioner.embedders.1.model.ln_final.weight" in keys
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight" in keys
    model = sdxl_server.get("/realhost/model").json()
    assert model["is_sdxl"] and not model["is_sd1"], model
    assert model["unet_class"] == "sgm.modules.diffusionmodules.openaimodel.UNetModel", model
    assert model["config"].endswith("tiny-random-sdxl.yaml"), model


def test_sdxl_beta_16_frames(sdxl_server):
    assert_video(sdxl_server.generate("/sdapi/v1/txt2img", xl_job(16, batch_size=16)), 16)
    assert_plain_unchanged(sdxl_server, "a 16-frame SDXL beta job")


def injected_norms(log: str, label: str) -> int:
    """The across-frame GroupNorm count the injection logged for ``label``."""
    line = next(x for x in log.splitlines() if x.startswith(f"injected {label}:"))
    return int(line.split("across-frame GroupNorm on ")[1].split()[0])


def test_hotshot_24_frames_in_windows_of_8(sdxl_server):
    """HotShot-XL (its own key format) over 24 frames with context 8: every UNet ResBlock norm
    and the output norm take statistics over the frames of a window, as HotShot was trained."""
    offset = sdxl_server.log_size()
    body = sdxl_server.generate("/sdapi/v1/txt2img", xl_job(24, model=HOTSHOT, batch_size=8, overlap=2))
    assert_video(body, 24)
    log = sdxl_server.log_since(offset)
    assert injected_norms(log, "HotShot-XL") == 2 * 17 + 1, log[-2000:]  # 17 ResBlocks, out[0]
    assert_plain_unchanged(sdxl_server, "a 24-frame HotShot-XL job in windows of 8")


def test_sdxl_beta_24_frames_in_windows_of_16(sdxl_server):
    offset = sdxl_server.log_size()
    body = sdxl_server.generate("/sdapi/v1/txt2img", xl_job(24, batch_size=16, overlap=4))
    assert_video(body, 24)
    assert injected_norms(sdxl_server.log_since(offset), "AnimateDiff SDXL beta") == 0
    assert_plain_unchanged(sdxl_server, "a 24-frame SDXL beta job in windows of 16")


@pytest.mark.parametrize("loop", ["N", "R-P", "R+P", "A"])
@pytest.mark.parametrize("mode", ["unet", "motion_module"])
def test_every_closed_loop_mode_in_both_window_modes(sdxl_server, loop, mode):
    """20 frames in windows of 8 on the sgm UNet, each closed-loop mode, full-UNet and motion-module
    windows (the latter with the spatial layers over frame-budget chunks)."""
    job = xl_job(20, batch_size=8, overlap=2, closed_loop=loop, window_mode=mode)
    job["prompt"] = "0: a photo of a cat\n10: a photo of a dog"
    assert_video(sdxl_server.generate("/sdapi/v1/txt2img", job), 20)


def test_prompt_travel_interpolates_both_sdxl_conditionings(sdxl_server):
    """Keyframes at frames 0 and 7: frame by frame the cross-attention tokens and the pooled
    vector both move away from frame 0 and toward frame 7 (the probe reads what the UNet gets)."""
    travel = xl_job(8, batch_size=8, steps=3)
    travel["prompt"] = "a photo\n0: of a cat\n7: a dog on a red sofa"
    video = pixels(assert_video(sdxl_server.generate("/sdapi/v1/txt2img", travel), 8))
    cond = sdxl_server.get("/realhost/first-cond").json()
    assert set(cond) == {"crossattn", "vector"}, cond
    for name, rows in cond.items():
        first, last = rows["from_first"], rows["from_last"]
        assert len(first) == 8 and first[0] == 0.0 and last[-1] == 0.0, (name, rows)
        assert all(b > a for a, b in zip(first, first[1:], strict=False)), (name, first)
        assert all(b < a for a, b in zip(last, last[1:], strict=False)), (name, last)
    still = xl_job(8, batch_size=8, steps=3)
    still["prompt"] = "a photo, of a cat"
    reference = pixels(gif_frames(sdxl_server.generate("/sdapi/v1/txt2img", still)["images"][0]))
    assert np.abs(video[-1].astype(int) - reference[-1].astype(int)).mean() > 1.0
    assert_plain_unchanged(sdxl_server, "an SDXL prompt-travel job")


def test_sdxl_hires_fix(sdxl_server):
    job = xl_job(8, batch_size=8)
    job.update(
        enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5
    )
    assert_video(sdxl_server.generate("/sdapi/v1/txt2img", job), 8, size=(128, 128))
    assert_plain_unchanged(sdxl_server, "an SDXL hires-fix job")


def test_sdxl_img2img_and_img2vid_with_last_frame(sdxl_server):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    job = xl_job(8, model=HOTSHOT, steps=3, batch_size=8)
    job.update(init_images=[encode_image(init)], denoising_strength=0.6)
    plain = pixels(assert_video(sdxl_server.generate("/sdapi/v1/img2img", job), 8))
    last = encode_image(Image.new("RGB", (64, 64), (40, 40, 200)))
    job["alwayson_scripts"]["AnimateDiff"]["args"][0]["last_frame"] = last
    with_last = pixels(assert_video(sdxl_server.generate("/sdapi/v1/img2img", job), 8))
    assert np.abs(with_last[-1].astype(int) - plain[-1].astype(int)).mean() > 1.0
    assert_plain_unchanged(sdxl_server, "SDXL img2img and img2vid jobs")


def test_an_sd15_module_is_refused_naming_both_sides(sdxl_server):
    response = sdxl_server.post("/sdapi/v1/txt2img", xl_job(8, model=SD15_IN_SDXL_FOLDER, batch_size=8))
    assert response.status_code == 422, f"HTTP {response.status_code}: {response.text[:2000]}"
    text = response.json().get("detail", response.text)
    for part in (f"model = '{SD15_IN_SDXL_FOLDER}'", "SD1.5", "SDXL", "tiny-random-sdxl"):
        assert part in text, f"{part!r} not in {text!r}"
    assert_plain_unchanged(sdxl_server, "a refused SD1.5 motion module")


def test_the_model_dropdown_offers_only_sdxl_modules(sdxl_server):
    """The API lists the panel's choices; SD1.5 files are left out, also one whose name does
    not say so (its keys do)."""
    info = sdxl_server.get("/sdapi/v1/script-info").json()
    script = next(s for s in info if s["name"] == "animatediff" and not s["is_img2img"])
    choices = next(a["choices"] for a in script["args"] if a["label"] == "Motion module")
    assert sorted(choices) == sorted([SDXL_BETA, HOTSHOT]), choices


def test_an_error_inside_sdxl_sampling_leaves_the_webui_unchanged(sdxl_server):
    job = xl_job(16, steps=3, batch_size=16)
    job["prompt"] = "a photo of a cat, realhost-inject-fault"
    offset = sdxl_server.log_size()
    response = sdxl_server.post("/sdapi/v1/txt2img", job)
    assert "realhost-fault: raising inside the UNet" in sdxl_server.log_since(offset)
    assert response.status_code != 200
    assert_plain_unchanged(sdxl_server, "an exception inside SDXL sampling")


def test_official_key_motion_lora_on_sdxl_beta(sdxl_server):
    """An official-key motion LoRA (``…processor.to_q_lora.down.weight``) through ``<lora:…>``:
    every attention projection of the 15 SDXL sites takes it; weight 0 is the plain video,
    weight 1 changes it, and the next job without it is the plain video again."""

    def video(tag: str = "") -> list[np.ndarray]:
        job = xl_job(8, batch_size=8, format=["GIF", "Frame"])
        job["prompt"] += tag
        return [f.astype(np.int16) for f in frames_of(sdxl_server.generate("/sdapi/v1/txt2img", job), 8)]

    plain = video()
    with_lora = video(f"<lora:{SDXL_MOTION_LORA}:1>")
    layers = sdxl_server.get("/realhost/loaded-networks").json()[SDXL_MOTION_LORA]["layers"]
    assert len(layers) == 15 * 2 * 4, len(layers)
    assert mean_gap(with_lora, plain) > 1.0
    assert mean_gap(video(f"<lora:{SDXL_MOTION_LORA}:0>"), plain) == 0.0
    assert mean_gap(video(), plain) == 0.0
    assert_plain_unchanged(sdxl_server, "SDXL jobs with an official-key motion LoRA")
