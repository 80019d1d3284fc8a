"""Travel curves, colour matching, the soundtrack and camera moves where they meet the WebUI:
the travel curve shapes the per-frame conditioning, the exported frames are colour-matched and
the MP4 carries the audio, onsets reach the infotext, a camera move gives each frame its own
start latent, and bad audio stops the job naming the field."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from test_audio import click_track, write_wav
from test_audio_mux import probe

from motion_module.params import parse_params
from motion_module.prompt_travel import slerp
from scripts.animatediff_webui import conditioning, img2vid, output
from scripts.animatediff_webui.patch_session import PatchSession

D = 8


def test_a_sine_curve_shapes_the_travel_between_keyframes():
    params = parse_params(
        {"video_length": 9, "travel_curve": "sine", "travel_curve_args": "1", "closed_loop": "N"}
    )
    p = SimpleNamespace(
        prompt="0: a\n8: b", negative_prompt="", n_iter=1, batch_size=9, enable_hr=False, iteration=0
    )
    state = conditioning.prepare_prompts(p, PatchSession(), params)
    a, b = torch.randn(77, D), torch.randn(77, D)
    rows = torch.stack([a] * 8 + [b])  # the WebUI encodes each frame's prompt: keyframes at 0 and 8
    cfg = SimpleNamespace(text_cond=rows, text_uncond=torch.zeros(9, 77, D), denoiser=SimpleNamespace(p=p))
    conditioning.on_cfg_denoiser(state, cfg)
    out = cfg.text_cond
    for frame in range(8):  # sin²(π·t): there and back within the segment
        t = math.sin(math.pi * frame / 8) ** 2
        torch.testing.assert_close(out[frame], slerp(a, b, t), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[8], b)  # the next keyframe keeps its own prompt


def fake_run(frames, tmp_path):
    images = [Image.new("RGB", (32, 32), (100 + 10 * k, 60, 40)) for k in range(frames)]
    processed = SimpleNamespace(
        images=images,
        infotexts=["info"] * frames,
        index_of_first_image=0,
        all_seeds=[5] * frames,
        comments="",
    )
    return SimpleNamespace(outpath_samples=str(tmp_path), is_api=False), processed, images


def test_exported_frames_are_colour_matched_and_the_mp4_carries_the_audio(tmp_path):
    wav = tmp_path / "clicks.wav"
    write_wav(wav, click_track(seconds=4.0))
    p, processed, images = fake_run(8, tmp_path)
    cast = Image.new("RGB", (32, 32), (40, 90, 200))  # a different colour cast mid-video
    processed.images[4] = cast
    params = parse_params(
        {"video_length": 8, "fps": 4, "format": ["MP4"], "color_match": True, "audio": str(wav)}
    )
    report = output.export_processed(p, processed, params)
    frames = report.videos[0].frames
    first, moved = np.asarray(frames[0], np.float32), np.asarray(frames[4], np.float32)
    assert np.abs(first.mean((0, 1)) - moved.mean((0, 1))).max() < 3  # the cast is gone
    assert not np.array_equal(np.asarray(cast), np.asarray(frames[4]))
    mp4 = report.videos[0].paths[next(iter(report.videos[0].paths))]
    info = probe(mp4)
    assert info["audio"] == "aac" and abs(info["duration"] - 2.0) < 0.1  # 8 frames at 4 fps
    _, fresh, originals = fake_run(8, tmp_path)
    plain = output.export_processed(p, fresh, parse_params({"video_length": 8, "format": ["TXT"]}))
    assert all(np.array_equal(a, b) for a, b in zip(plain.videos[0].frames, originals, strict=True))


def test_a_camera_move_gives_each_frame_its_own_start_latent():
    frames = 4
    image = Image.new("RGB", (64, 32), 0)
    image.paste((255, 255, 255), (8, 8, 12, 12))  # a white marker away from the borders

    def encode(p, picture):  # the marker's column as the "latent"
        pixels = np.asarray(picture.convert("L"))
        column = float(np.argwhere(pixels > 128)[:, 1].mean())
        return torch.full((1, 1, 2, 2), column)

    p = SimpleNamespace(
        init_images=[image], init_latent=torch.zeros(frames, 1, 2, 2), seeds=list(range(frames)), mask=None
    )
    camera = parse_params({"translate_x": "8", "video_length": frames}).extras
    start = img2vid.blend_init_latent(
        p,
        PatchSession(),
        dataclasses.replace(parse_params({}).img2vid, latent_scale=1000.0),  # keep the image, add no noise
        camera=camera,
        noise_fn=lambda p_, shape: torch.zeros(frames, *shape),
        encode_fn=encode,
    )
    assert [round(float(v)) for v in start.moved[:, 0, 0, 0]] == [10, 18, 26, 34]  # 8 px more each frame
    still = img2vid.blend_init_latent(
        p,
        PatchSession(),
        parse_params({}).img2vid,
        camera=parse_params({}).extras,
        noise_fn=lambda p_, shape: torch.zeros(frames, *shape),
        encode_fn=encode,
    )
    assert still.moved is None  # no camera move: today's path


def test_the_beat_button_lists_onset_frames(tmp_path):
    from scripts.animatediff_webui import ui

    wav = tmp_path / "clicks.wav"
    write_wav(wav, click_track(seconds=2.0))  # 120 bpm: a click every 0.5 s
    text = ui.beat_summary(str(wav), 8, "off")
    assert text.startswith("Percussive onsets at frames: 0, 4, 8, 12")
    assert ui.beat_summary(None, 8, "both") == "Upload a soundtrack first"
    assert "audio" in ui.beat_summary(str(tmp_path / "missing.wav"), 8, "both")
