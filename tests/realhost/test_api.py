"""Real host, API: AnimateDiff jobs on a real WebUI v1.10.1, and proof that none leaves it changed.

Each AnimateDiff job is tiny (64×64, 2-3 steps, random weights); the leak checks compare a plain
txt2img after the job with the same job run on the freshly started server, pixel for pixel.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image
from realhost_server import (
    DIFFUSERS_LORA,
    MM_IDENTITY,
    MM_NAME,
    MOTION_LORA,
    NOWHERE_LORA,
    OFFICIAL_LORA,
    PLAIN,
    SECOND_CHECKPOINT,
    V3_ADAPTER,
    decode_image,
    encode_image,
    info_of,
    txt2img_job,
)

pytestmark = pytest.mark.realhost

FAULT_MARKER = "realhost-inject-fault"  # see fault_extension/scripts/realhost_fault.py


def ad_args(**fields) -> dict:
    return {"AnimateDiff": {"args": [{"enable": True, "model": MM_NAME, "format": ["GIF"], **fields}]}}


def ad_job(frames: int, steps: int = 2, **fields) -> dict:
    return txt2img_job(seed=99, steps=steps, alwayson_scripts=ad_args(video_length=frames, **fields))


def gif_frames(b64: str) -> list[Image.Image]:
    image = decode_image(b64)
    assert image.format == "GIF", f"first API image is {image.format}, expected the GIF"
    frames = []
    for i in range(image.n_frames):
        image.seek(i)
        frames.append(image.convert("RGB"))
    return frames


def assert_video(body: dict, frames: int, size=(64, 64)) -> list[Image.Image]:
    assert body["images"], "no images returned"
    video = gif_frames(body["images"][0])
    assert len(video) == frames, f"GIF has {len(video)} frames, expected {frames}"
    assert all(f.size == size for f in video)
    arrays = [np.asarray(f, dtype=np.int16) for f in video]
    assert any(np.abs(a - arrays[0]).mean() > 1.0 for a in arrays[1:]), "all frames are the same picture"
    infotext = (info_of(body).get("infotexts") or [""])[0]
    assert "AnimateDiff" in infotext, f"no AnimateDiff entry in the infotext: {infotext!r}"
    return video


def pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(im.convert("RGB")) for im in images]


def assert_plain_unchanged(server, after: str) -> None:
    body = server.generate("/sdapi/v1/txt2img", PLAIN)
    now = pixels([decode_image(b) for b in body["images"]])
    fresh = pixels(server.fresh_plain)
    assert len(now) == len(fresh), (
        f"plain txt2img after {after} returned {len(now)} images, fresh {len(fresh)}"
    )
    for i, (a, b) in enumerate(zip(now, fresh, strict=True)):
        diff = np.abs(a.astype(np.int16) - b).max()
        assert np.array_equal(a, b), (
            f"plain txt2img after {after} differs from a fresh start (image {i}, max |Δ| = {diff}):"
            " the WebUI was left changed"
        )


# --- the harness itself ---------------------------------------------------------------------------


def test_plain_txt2img_is_deterministic(api_server):
    assert len(api_server.fresh_plain) == PLAIN["batch_size"]
    assert all(im.size == (64, 64) for im in api_server.fresh_plain)
    assert_plain_unchanged(api_server, "another plain txt2img")


def test_script_is_registered(api_server):
    scripts = api_server.get("/sdapi/v1/scripts").json()
    assert "animatediff" in scripts["txt2img"] and "animatediff" in scripts["img2img"], scripts


# --- AnimateDiff jobs ------------------------------------------------------------------------------


def test_txt2img_16_frames_returns_16_frame_gif(api_server):
    body = api_server.generate("/sdapi/v1/txt2img", ad_job(16, batch_size=16))
    assert_video(body, 16)
    assert_plain_unchanged(api_server, "a 16-frame AnimateDiff job")


def frames_of(body: dict, count: int) -> list[np.ndarray]:
    """The ``Frame`` images that follow the GIF in an API answer."""
    images = [decode_image(b) for b in body["images"][1:]]
    assert len(images) == count, f"expected {count} frames after the GIF, got {len(images)}"
    return pixels(images)


def test_motion_module_couples_the_frames(api_server):
    """Frame i of seed s+1 and frame i+1 of seed s start from the same noise. Without a motion
    module they come out equal; with one they differ, because each frame sees its neighbours and
    its position. The identity module (proj_out zeroed) is the control: same path, no effect.
    (Measured here: control 0.0, random module ~1.2 levels mean per frame; unrelated frames ~48.)"""

    def video(model: str, seed: int) -> list[np.ndarray]:
        job = ad_job(8, batch_size=8, model=model, format=["GIF", "Frame"])
        job["seed"] = seed
        return [f.astype(np.int16) for f in frames_of(api_server.generate("/sdapi/v1/txt2img", job), 8)]

    def shifted_gap(first: list[np.ndarray], second: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(second[i] - first[i + 1]).mean() for i in range(7)]))

    identity = video(MM_IDENTITY, 500)
    control = shifted_gap(identity, video(MM_IDENTITY, 501))
    real = video(MM_NAME, 500)
    coupling = shifted_gap(real, video(MM_NAME, 501))
    effect = float(np.mean([np.abs(r - i).mean() for r, i in zip(real, identity, strict=True)]))
    assert control <= 0.25, f"identity motion module: shifted frames differ by {control:.2f} levels"
    assert effect >= 3.0, f"the motion module's output barely reaches the frames ({effect:.2f} levels)"
    assert coupling >= 0.6, f"frames are not coupled: shifted frames differ by only {coupling:.2f} levels"


def test_txt2img_24_frames_with_context_16(api_server):
    body = api_server.generate("/sdapi/v1/txt2img", ad_job(24, batch_size=16, overlap=4))
    assert_video(body, 24)


def test_img2img_from_init_image(api_server):
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    init = Image.fromarray(
        np.stack(
            [np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)],
            axis=-1,
        )
    )
    job = ad_job(8, steps=3, batch_size=8)
    job.update(init_images=[encode_image(init)], denoising_strength=0.6)
    body = api_server.generate("/sdapi/v1/img2img", job)
    assert_video(body, 8)
    assert_plain_unchanged(api_server, "an img2img AnimateDiff job")


@pytest.mark.parametrize("sampler", ["DDIM", "UniPC", "LCM"])
def test_timestep_and_lcm_samplers_run_windowed(api_server, sampler):
    """The windowed denoiser also wraps the timestep samplers' and LCM's denoiser (20 frames, 2 windows)."""
    job = ad_job(20, steps=3, batch_size=16, overlap=4)
    job["sampler_name"] = sampler
    body = api_server.generate("/sdapi/v1/txt2img", job)
    assert_video(body, 20)
    assert_plain_unchanged(api_server, f"a windowed {sampler} job")


def test_prompt_travel_keyframes(api_server):
    """Keyframes change the video, and the infotext keeps the multi-line prompt the user typed.

    Prompts are ones the random test checkpoint encodes without NaNs (some, e.g. "a photo, a cat,
    best quality", make the WebUI itself produce NaNs with it, AnimateDiff or not).
    """
    travel_prompt = "a photo\n0: of a cat\n4: a dog on a red sofa"
    still = ad_job(8, steps=3, batch_size=8)
    still["prompt"] = "a photo, of a cat"
    travel = dict(still, prompt=travel_prompt)
    body = api_server.generate("/sdapi/v1/txt2img", travel)
    video = pixels(assert_video(body, 8))
    reference = pixels(gif_frames(api_server.generate("/sdapi/v1/txt2img", still)["images"][0]))
    assert np.abs(video[-1].astype(int) - reference[-1].astype(int)).mean() > 1.0, (
        "the last frame ignores the keyframe at frame 4"
    )
    infotext = (info_of(body).get("infotexts") or [""])[0]
    assert infotext.startswith(travel_prompt), f"the infotext lost the multi-line prompt: {infotext!r}"


def test_img2vid_with_last_frame(api_server):
    """An optional last frame (base64 over the API) changes the video; the job leaves nothing behind."""
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    last = Image.new("RGB", (64, 64), (40, 40, 200))
    job = ad_job(8, steps=3, batch_size=8)
    job.update(init_images=[encode_image(init)], denoising_strength=0.6)
    without_last = pixels(gif_frames(api_server.generate("/sdapi/v1/img2img", job)["images"][0]))
    job["alwayson_scripts"]["AnimateDiff"]["args"][0]["last_frame"] = encode_image(last)
    body = api_server.generate("/sdapi/v1/img2img", job)
    with_last = pixels(assert_video(body, 8))
    assert np.abs(with_last[-1].astype(int) - without_last[-1].astype(int)).mean() > 1.0, (
        "the last frame did not change the end of the video"
    )
    assert_plain_unchanged(api_server, "an img2vid job with a last frame")


def test_api_infotext_field_restores_animatediff(api_server):
    """A request that carries only an earlier result's infotext (no alwayson_scripts) gets a video
    with that result's AnimateDiff settings, as pasting it into the UI would."""
    first = api_server.generate("/sdapi/v1/txt2img", ad_job(6, steps=2, batch_size=6, fps=5))
    infotext = (info_of(first).get("infotexts") or [""])[0]
    assert "video_length: 6" in infotext
    body = api_server.generate(
        "/sdapi/v1/txt2img", {"infotext": infotext, "width": 64, "height": 64, "steps": 2}
    )
    video = assert_video(body, 6)
    gif = decode_image(body["images"][0])
    assert gif.info.get("duration") == 200, f"fps 5 should give 200 ms frames, got {gif.info.get('duration')}"
    assert len(video) == 6


def test_predecessor_payload_works_unchanged(api_server):
    """The predecessor's documented API payload (docs/behaviour.md): every key, its example values."""
    predecessor = {
        "model": MM_NAME,
        "format": ["GIF"],
        "enable": True,
        "video_length": 16,
        "fps": 8,
        "loop_number": 0,
        "closed_loop": "R+P",
        "batch_size": 16,
        "stride": 1,
        "overlap": -1,
        "interp": "Off",
        "interp_x": 10,
        "video_source": None,
        "video_path": "",
        "mask_path": "",
        "freeinit_enable": False,
        "freeinit_filter": "butterworth",
        "freeinit_ds": 0.25,
        "freeinit_dt": 0.25,
        "freeinit_iters": 3,
        "latent_power": 1,
        "latent_scale": 32,
        "last_frame": None,
        "latent_power_last": 1,
        "latent_scale_last": 32,
        "request_id": "realhost",
    }
    job = ad_job(16)
    job["alwayson_scripts"] = {"AnimateDiff": {"args": [predecessor]}}
    body = api_server.generate("/sdapi/v1/txt2img", job)
    assert_video(body, 16)
    infotext = info_of(body)["infotexts"][0]
    assert "request_id: realhost" in infotext, infotext


def test_hires_fix_runs_with_the_motion_module(api_server):
    job = ad_job(8, batch_size=8)
    job.update(
        enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5
    )
    assert_video(api_server.generate("/sdapi/v1/txt2img", job), 8, size=(128, 128))
    assert_plain_unchanged(api_server, "a hires-fix AnimateDiff job")


def test_checkpoint_switch_between_jobs(api_server):
    """A job on another checkpoint (the WebUI loads it, then restores the first one): the motion
    module follows the model, and the first model comes back untouched."""
    job = ad_job(8, batch_size=8)
    job["override_settings"] = {"sd_model_checkpoint": SECOND_CHECKPOINT}
    other = assert_video(api_server.generate("/sdapi/v1/txt2img", job), 8)
    first = assert_video(api_server.generate("/sdapi/v1/txt2img", ad_job(8, batch_size=8)), 8)
    gap = np.mean(
        [np.abs(np.asarray(a, np.int16) - np.asarray(b)).mean() for a, b in zip(other, first, strict=True)]
    )
    assert gap > 5.0, "the job on the second checkpoint looks like the first checkpoint's"
    assert_plain_unchanged(api_server, "AnimateDiff jobs on two checkpoints")


def test_batch_count_gives_one_video_each(api_server):
    job = ad_job(8, batch_size=8)
    job["n_iter"] = 2
    body = api_server.generate("/sdapi/v1/txt2img", job)
    videos = [gif_frames(b) for b in body["images"][:2]]
    assert [len(v) for v in videos] == [8, 8], f"expected two 8-frame GIFs, got {[len(v) for v in videos]}"
    first, second = (np.asarray(v[0], np.int16) for v in videos)
    assert np.abs(first - second).mean() > 5.0, "the two videos start with the same frame (same seeds?)"


def test_positional_args_in_ui_order(api_server):
    """The API's list form: our script's args by position, as /sdapi/v1/script-info lists them."""
    info = api_server.get("/sdapi/v1/script-info").json()
    script = next(s for s in info if s["name"] == "animatediff" and not s["is_img2img"])
    labels = [arg["label"] for arg in script["args"]]
    args = [arg["value"] for arg in script["args"]]
    for label, value in (
        ("Motion module", MM_NAME),
        ("Enable AnimateDiff", True),
        ("Number of frames", 8),
        ("Context batch size", 8),
        ("Save format", ["GIF"]),
    ):
        assert label in labels, f"no argument labelled {label!r} in {labels}"
        args[labels.index(label)] = value
    job = ad_job(8)
    job["alwayson_scripts"] = {"AnimateDiff": {"args": args}}
    assert_video(api_server.generate("/sdapi/v1/txt2img", job), 8)


def test_bad_value_is_refused_with_the_field_named(api_server):
    """A rejected setup must stop the job with the field named, never run on as unrelated stills."""
    job = ad_job(8, batch_size=8, closed_loop="sideways")
    response = api_server.post("/sdapi/v1/txt2img", job)
    assert response.status_code != 200 or len(response.json().get("images", [])) == 0, (
        f"a bad closed_loop value ran anyway: {response.status_code}, "
        f"{len(response.json().get('images', []))} images"
    )
    assert "closed_loop" in response.text and "sideways" in response.text, response.text[:2000]
    assert_plain_unchanged(api_server, "a refused AnimateDiff job")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": "/etc/passwd"}, ("model = '/etc/passwd'", "expected a motion-module file")),
        (
            {"model": "missing.safetensors"},
            ("model = 'missing.safetensors'", "available for this checkpoint"),
        ),
        ({"motion_scale": 3}, ("motion_scale = 3", "expected a number 0..2")),
        ({"noise_type": "pink"}, ("noise_type = 'pink'", "expected one of default")),
        ({"freeinit_enable": True, "freeinit_iters": 9}, ("freeinit_iters = 9", "2..5")),
        ({"video_path": "/nonexistent/frames"}, ("video_path", "/nonexistent/frames")),
    ],
)
def test_every_refusal_names_field_value_and_what_is_allowed(api_server, fields, named):
    response = api_server.post("/sdapi/v1/txt2img", ad_job(8, batch_size=8, **fields))
    assert response.status_code == 422, f"HTTP {response.status_code}: {response.text[:1000]}"
    assert all(text in response.text for text in named), response.text[:1000]


def test_video_without_controlnet_is_refused(api_server):
    """This server has no sd-webui-controlnet: a video given to AnimateDiff cannot control the
    frames, so the job stops with HTTP 422 naming the field (never a video without the control)."""
    clip = api_server.data_dir / "no-controlnet.gif"
    frames = [Image.new("RGB", (64, 64), (40 * i, 0, 0)) for i in range(4)]
    frames[0].save(clip, save_all=True, append_images=frames[1:], duration=100)
    response = api_server.post("/sdapi/v1/txt2img", ad_job(0, video_source=str(clip)))
    assert response.status_code == 422, f"HTTP {response.status_code}: {response.text[:2000]}"
    assert "video_source" in response.text and "sd-webui-controlnet" in response.text, response.text[:2000]
    assert_plain_unchanged(api_server, "a video job refused for want of ControlNet")


# --- motion LoRAs through the builtin Lora extension ------------------------------------------------

MOTION_LORA_LAYERS = 20 * 2 * 4  # v3 SD1.5: 20 sites × 2 attention blocks × to_q/to_k/to_v/to_out.0


def lora_video(server, tag: str = "") -> tuple[list[np.ndarray], dict]:
    job = ad_job(8, batch_size=8)
    job["prompt"] += tag
    body = server.generate("/sdapi/v1/txt2img", job)
    video = [np.asarray(f, np.int16) for f in assert_video(body, 8)]
    return video, server.get("/realhost/loaded-networks").json()


def mean_gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b, strict=True)]))


def test_motion_lora_through_builtin_lora_extension(api_server):
    """An A1111-converted motion LoRA in the prompt (``<lora:NAME:1>``) reaches every attention
    projection of the injected motion module through the WebUI's own Lora extension, also when a
    plain job read it first (matching none of its keys then); at weight 0 the video is the plain
    AnimateDiff one; so is the next job without it (the Lora extension restores its backup), and
    the plain txt2img is untouched.

    The tag is glued to the prompt: the WebUI strips the tag, not a ", " before it."""
    offset = api_server.log_size()
    plain, none_loaded = lora_video(api_server)
    assert none_loaded == {}, f"networks loaded for a job without <lora:>: {none_loaded}"
    read_without_motion = dict(PLAIN, prompt=PLAIN["prompt"] + f"<lora:{MOTION_LORA}:1>")
    api_server.generate("/sdapi/v1/txt2img", read_without_motion)
    with_lora, loaded = lora_video(api_server, f"<lora:{MOTION_LORA}:1>")
    layers = loaded.get(MOTION_LORA, {}).get("layers", [])
    assert len(layers) == MOTION_LORA_LAYERS, (
        f"the Lora extension placed {len(layers)} of {MOTION_LORA_LAYERS} motion-LoRA layers: {loaded}\n"
        f"--- server log ---\n{api_server.log_since(offset)[-3000:]}"
    )
    effect = mean_gap(with_lora, plain)
    assert effect > 1.0, f"<lora:{MOTION_LORA}:1> barely changes the video ({effect:.2f} levels mean)"
    at_zero, _ = lora_video(api_server, f"<lora:{MOTION_LORA}:0>")
    assert mean_gap(at_zero, plain) == 0.0, "the motion LoRA at weight 0 changed the video"
    again, _ = lora_video(api_server)
    assert mean_gap(again, plain) == 0.0, "the motion LoRA stayed in the motion module after its job"
    log = api_server.log_since(offset)
    for trouble in ("Lora not found", "loading network", "unsupported type", "Traceback"):
        assert trouble not in log, f"{trouble!r} in the server log:\n{log[-3000:]}"
    assert_plain_unchanged(api_server, f"AnimateDiff jobs with the motion LoRA {MOTION_LORA}")


def test_motion_lora_key_forms_with_the_same_numbers_make_the_same_video(api_server):
    """Official (``…processor.to_q_lora.down.weight``), diffusers (``unet.…attn1.…``) and
    A1111-converted files holding the same numbers: each places all 160 layers and the three
    videos are pixel-identical; the official file at weight 0 gives the plain video, at 1 it
    changes it."""
    plain, _ = lora_video(api_server)
    videos = {}
    for name in (MOTION_LORA, OFFICIAL_LORA, DIFFUSERS_LORA):
        videos[name], loaded = lora_video(api_server, f"<lora:{name}:1>")
        assert len(loaded[name]["layers"]) == MOTION_LORA_LAYERS, (name, loaded)
    assert mean_gap(videos[OFFICIAL_LORA], videos[MOTION_LORA]) == 0.0
    assert mean_gap(videos[DIFFUSERS_LORA], videos[MOTION_LORA]) == 0.0
    assert mean_gap(videos[OFFICIAL_LORA], plain) > 1.0
    at_zero, _ = lora_video(api_server, f"<lora:{OFFICIAL_LORA}:0>")
    assert mean_gap(at_zero, plain) == 0.0, "the official-key motion LoRA at weight 0 changed the video"
    assert_plain_unchanged(api_server, "AnimateDiff jobs with official and diffusers motion LoRAs")


def test_the_official_v3_adapter_applies_to_the_spatial_attention(api_server):
    """The v3 domain adapter's official keys (``down_blocks.0.attentions.0.…attn1.processor.…``)
    reach the 16 spatial transformers' q/k/v/out of attn1 and attn2 (128 layers)."""
    plain, _ = lora_video(api_server)
    adapted, loaded = lora_video(api_server, f"<lora:{V3_ADAPTER}:1>")
    layers = loaded[V3_ADAPTER]["layers"]
    assert len(layers) == 16 * 2 * 4 and all(name.startswith("diffusion_model_") for name in layers), layers
    assert mean_gap(adapted, plain) > 1.0
    at_zero, _ = lora_video(api_server, f"<lora:{V3_ADAPTER}:0>")
    assert mean_gap(at_zero, plain) == 0.0
    assert_plain_unchanged(api_server, "AnimateDiff jobs with the v3 adapter")


def test_a_motion_lora_that_matches_no_layer_is_refused_naming_the_file(api_server):
    """The Lora extension alone would load it with no layer and run on silently."""
    job = ad_job(8, batch_size=8)
    job["prompt"] += f"<lora:{NOWHERE_LORA}:1>"
    response = api_server.post("/sdapi/v1/txt2img", job)
    assert response.status_code == 422, f"HTTP {response.status_code}: {response.text[:2000]}"
    assert f"LoRA file {NOWHERE_LORA}.safetensors: none of its 160 layers" in response.text, response.text
    assert_plain_unchanged(api_server, "a refused motion LoRA")
    video, loaded = lora_video(api_server, f"<lora:{MOTION_LORA}:1>")  # the next job is not affected
    assert len(loaded[MOTION_LORA]["layers"]) == MOTION_LORA_LAYERS


# --- failures must leave the WebUI as it was --------------------------------------------------------


def test_exception_mid_sampling_leaves_webui_unchanged(api_server):
    job = ad_job(16, steps=3, batch_size=16)
    job["prompt"] = f"a photo of a cat, {FAULT_MARKER}"
    offset = api_server.log_size()
    response = api_server.post("/sdapi/v1/txt2img", job)
    log = api_server.log_since(offset)
    assert "realhost-fault: raising inside the UNet" in log, f"the fault never fired:\n{log[-3000:]}"
    assert response.status_code != 200, "an exception inside sampling was reported as success"
    assert_plain_unchanged(api_server, "an exception inside AnimateDiff sampling")
    # and the extension recovers: the next AnimateDiff job runs
    assert_video(api_server.generate("/sdapi/v1/txt2img", ad_job(8, batch_size=8)), 8)


@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_interrupt_leaves_webui_unchanged(api_server, action):
    steps = 30
    result: dict = {}

    def run():
        result["response"] = api_server.post("/sdapi/v1/txt2img", ad_job(16, steps=steps, batch_size=16))

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    reached = None
    while time.monotonic() < started + 120 and worker.is_alive():
        state = api_server.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]
        if state.get("sampling_steps") == steps and state.get("sampling_step", 0) >= 1:
            reached = state["sampling_step"]
            break
        time.sleep(0.2)
    assert reached is not None, "the AnimateDiff job never reached sampling step 1"
    assert api_server.post(f"/sdapi/v1/{action}", {}, timeout=30).status_code == 200
    worker.join(timeout=180)
    assert not worker.is_alive(), f"the job did not stop within 180 s of {action}"
    assert "response" in result, f"the request got no HTTP answer after {action}"
    state = api_server.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]
    flag = "interrupted" if action == "interrupt" else "skipped"
    assert state[flag], f"{action} did not reach the job: {state}"
    assert_plain_unchanged(api_server, f"an AnimateDiff job stopped by {action}")


# --- FreeInit, FreeNoise and motion strength ----------------------------------------------------


def test_freeinit_takes_every_iteration_and_changes_the_video(api_server):
    """The predecessor's FreeInit keys, 3 iterations: a different video in about 3× the time."""

    def timed(**fields):
        job = ad_job(8, steps=4, batch_size=8, format=["GIF", "Frame"], **fields)
        started = time.monotonic()
        body = api_server.generate("/sdapi/v1/txt2img", job)
        return time.monotonic() - started, frames_of(body, 8), body

    api_server.generate("/sdapi/v1/txt2img", ad_job(8, steps=1, batch_size=8))  # warm caches
    plain_time, plain, _ = timed(freeinit_enable=False)
    freeinit_fields = dict(
        freeinit_enable=True, freeinit_filter="butterworth", freeinit_ds=0.25, freeinit_dt=0.25
    )
    free_time, free, body = timed(freeinit_iters=3, **freeinit_fields)
    difference = float(
        np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(plain, free, strict=True)])
    )
    assert difference > 2.0, f"FreeInit barely changed the video ({difference:.2f} levels)"
    ratio = free_time / plain_time
    assert 1.8 < ratio < 4.5, f"3 FreeInit iterations took {ratio:.2f}× one sampling run"
    infotext = info_of(body)["infotexts"][0]
    assert "freeinit_enable: True" in infotext and "freeinit_iters: 3" in infotext


def test_motion_scale_0_is_the_identity_module(api_server):
    """Motion scale 0 leaves what the motion module adds out: pixel-identical to the identity
    module (proj_out zeroed); a black motion mask with minimum 0 is the same."""

    def video(**fields):
        job = ad_job(8, batch_size=8, format=["GIF", "Frame"], **fields)
        return frames_of(api_server.generate("/sdapi/v1/txt2img", job), 8)

    identity = video(model=MM_IDENTITY)
    still = video(motion_scale=0)
    assert all(np.array_equal(a, b) for a, b in zip(identity, still, strict=True))
    black = Image.new("L", (64, 64), 0)
    masked = video(motion_mask=encode_image(black), motion_mask_min=0)
    assert all(np.array_equal(a, b) for a, b in zip(identity, masked, strict=True))
    moving = video()
    assert any(not np.array_equal(a, b) for a, b in zip(identity, moving, strict=True))


def test_freenoise_changes_a_long_video(api_server):
    def video(**fields):
        job = ad_job(12, batch_size=4, overlap=1, format=["GIF", "Frame"], **fields)
        return frames_of(api_server.generate("/sdapi/v1/txt2img", job), 12)

    """With FreeNoise, frames past the first context start from reshuffled noise of the first."""
    default, freenoise = video(), video(noise_type="FreeNoise")
    assert any(not np.array_equal(a, b) for a, b in zip(default[4:], freenoise[4:], strict=True))


def test_progress_names_the_window_and_only_grows(api_server):
    """/sdapi/v1/progress polled during a 40-frame job: increasing progress, window in the text."""
    result: dict = {}

    def run():
        job = ad_job(40, steps=3, batch_size=8, overlap=2, window_mode="unet")  # UNet calls per window
        result["body"] = api_server.generate("/sdapi/v1/txt2img", job)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    seen = []
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        progress = api_server.get("/sdapi/v1/progress?skip_current_image=true").json()
        if progress["state"].get("job_count", 0) > 0:
            seen.append((progress["progress"], progress.get("textinfo") or ""))
        time.sleep(0.1)
    worker.join(timeout=60)
    assert_video(result["body"], 40)
    texts = [text for _, text in seen if "window" in text]
    assert texts, f"no progress text named a window: {seen[:40]}"
    assert any(text.startswith("AnimateDiff: step ") and " · window " in text for text in texts)
    values = [value for value, _ in seen if value > 0]
    assert len(values) >= 3 and all(b >= a - 1e-6 for a, b in zip(values, values[1:], strict=False)), values


def test_live_previews_decode_a_strip_of_a_long_video(api_server):
    """With live previews on every step and the progress grid on (the WebUI's default), a 64-frame
    job decodes at most four frames per preview instead of all 64."""
    options = api_server.get("/sdapi/v1/options").json()
    keep = {
        k: options[k] for k in ("show_progress_every_n_steps", "live_previews_enable", "show_progress_grid")
    }
    api_server.post("/sdapi/v1/options", {"show_progress_every_n_steps": 1, "live_previews_enable": True})
    try:
        api_server.get("/realhost/preview-decodes")  # reset
        result: dict = {}

        def run():
            result["body"] = api_server.generate("/sdapi/v1/txt2img", ad_job(64, steps=3, batch_size=16))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        images = set()
        while worker.is_alive():
            progress = api_server.get("/sdapi/v1/progress").json()  # asks for the live preview
            if progress.get("current_image"):
                images.add(progress["current_image"])
            time.sleep(0.2)
        previews = len(images)  # each different preview is one decode of the current latents
        worker.join(timeout=60)
        assert_video(result["body"], 64)
        decodes = api_server.get("/realhost/preview-decodes").json()["decodes"]
    finally:
        api_server.post("/sdapi/v1/options", keep)
    assert previews >= 1, "no live preview was made during the job"
    assert 0 < decodes <= 4 * (previews + 1), (
        f"{decodes} latents decoded for {previews} previews of 64 frames"
    )


# --- music and camera -------------------------------------------------------------------------------


def click_track_wav(seconds: float = 3.0, rate: int = 22050, bpm: int = 120) -> bytes:
    """A WAV of short clicks on the beat, made with the standard library."""
    import io
    import wave

    samples = np.zeros(int(seconds * rate), np.float32)
    for start in np.arange(0, seconds, 60 / bpm):
        i = int(start * rate)
        samples[i : i + 200] = np.sin(np.arange(min(200, len(samples) - i)) * 0.5)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_music_and_camera_in_one_img2img_job(api_server, tmp_path):
    """A travel curve, colour matching, a soundtrack with its onsets and a camera move: an MP4 with
    an audio stream of the video's length, and an infotext that gives every setting back."""
    import base64
    import subprocess

    import imageio_ffmpeg

    from motion_module.params import parse_params, read_infotext

    frames, fps = 8, 4
    init = Image.new("RGB", (64, 64), (90, 120, 60))
    init.paste((240, 240, 240), (24, 24, 40, 40))
    fields = {
        "travel_curve": "sine",
        "travel_curve_args": "1",
        "color_match": True,
        "audio": base64.b64encode(click_track_wav()).decode(),
        "audio_onsets": "percussive",
        "zoom": "0:(1.0), 7:(1.05)",
        "translate_x": "2",
        "fps": fps,
        "format": ["GIF", "MP4"],
    }
    job = ad_job(frames, steps=2, batch_size=frames, **fields)
    job["prompt"] = "0: a photo of a cat\n4: a photo of a dog"
    job.update(init_images=[encode_image(init)], denoising_strength=0.6)
    body = api_server.generate("/sdapi/v1/img2img", job)
    assert_video(body, frames)
    mp4 = tmp_path / "video.mp4"
    mp4.write_bytes(base64.b64decode(body["images"][1]))
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True
    )
    assert "Audio: aac" in probe.stderr, probe.stderr[-1500:]
    assert f"Duration: 00:00:0{frames // fps}." in probe.stderr, probe.stderr[-1500:]  # 2 s: cut to the video
    infotext = info_of(body)["infotexts"][0]
    assert "AnimateDiff onsets: " in infotext and "0 2 4 6" in infotext  # a click every 0.5 s at 4 fps
    entry = infotext.split('AnimateDiff: "', 1)[1].split('"', 1)[0]
    back = parse_params({"enable": True} | read_infotext(entry), ignore_unknown=True).extras
    assert (back.travel_curve.value, back.travel_curve_args, back.color_match) == ("sine", "1", True)
    assert (back.zoom, back.translate_x) == ("0:(1.0), 7:(1.05)", "2")  # the audio itself is no infotext
    assert_plain_unchanged(api_server, "an AnimateDiff job with music and a camera move")
