"""SVD jobs on a tiny official-layout checkpoint: frames, seeds, chunked decoding, stopping,
offloading, the memory plan, and the whole job against diffusers' StableVideoDiffusionPipeline
built from the same weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from svd_factory import write_tiny_svd
from svd_peers import diffusers_pipeline

from motion_module.svd.memory import GIB
from motion_module.svd.params import SvdParams
from motion_module.svd.pipeline import (
    SvdInterrupted,
    SvdMemory,
    generate,
    load_svd,
    memory_plan,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
WIDTH, HEIGHT = 96, 64  # latents 12 x 8: both halve once in the tiny UNet
BASE = SvdParams(width=WIDTH, height=HEIGHT, frames=3, steps=2, seed=11, max_guidance=2.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_svd(write_tiny_svd(tmp_path_factory.mktemp("svd"), "svd", seed=1))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:, : WIDTH // 2] //= 3  # some structure, so the embedding is not of pure noise
    return Image.fromarray(pixels)


def arrays(result) -> np.ndarray:
    return np.stack([np.asarray(frame) for frame in result.frames])


def run(model, picture, **changes):
    return generate(model, picture, dataclasses.replace(BASE, **changes), device=CPU)


def test_frames_and_size(model, picture) -> None:
    result = run(model, picture)
    assert len(result.frames) == 3 and result.steps_done == 2 and not result.interrupted
    assert all(frame.size == (WIDTH, HEIGHT) and frame.mode == "RGB" for frame in result.frames)
    default = run(model, picture, frames=0, steps=1)
    assert len(default.frames) == model.default_frames == 14


def test_the_picture_is_fitted_without_stretching(model, picture) -> None:
    wide = picture.resize((300, 100))
    result = run(model, wide, steps=1)
    assert [frame.size for frame in result.frames] == [(WIDTH, HEIGHT)] * 3


def test_same_seed_same_frames_and_a_new_seed_changes_them(model, picture) -> None:
    first, again, other = run(model, picture), run(model, picture), run(model, picture, seed=12)
    assert first.seed == 11 and np.array_equal(arrays(first), arrays(again))
    assert np.abs(arrays(first).astype(int) - arrays(other)).mean() > 1


def test_random_seed_is_reported_and_reproduces(model, picture) -> None:
    picked = run(model, picture, seed=-1, steps=1)
    assert 0 <= picked.seed < 2**32
    assert np.array_equal(arrays(picked), arrays(run(model, picture, seed=picked.seed, steps=1)))


def test_decode_chunks(model, picture) -> None:
    whole = arrays(run(model, picture))
    assert np.array_equal(whole, arrays(run(model, picture, decode_chunk=3)))
    assert np.array_equal(whole, arrays(run(model, picture, decode_chunk=4)))
    # smaller chunks are decoded as videos of their own: the temporal layers see fewer frames
    # (the result is compared with diffusers' own chunked decoding in the end-to-end test)
    one = arrays(run(model, picture, decode_chunk=1))
    assert one.shape == whole.shape and not np.array_equal(one, whole)


def test_should_stop_after_k_steps_and_on_step(model, picture) -> None:
    progress, asked = [], []

    def should_stop() -> bool:
        asked.append(True)
        return len(asked) > 2

    result = generate(
        model,
        picture,
        dataclasses.replace(BASE, steps=5),
        device=CPU,
        on_step=lambda done, total: progress.append((done, total)),
        should_stop=should_stop,
    )
    assert result.interrupted and result.steps_done == 2 and len(result.frames) == 3
    assert progress == [(1, 5), (2, 5)]
    full: list[tuple[int, int]] = []
    run_full = generate(
        model,
        picture,
        dataclasses.replace(BASE, steps=4),
        device=CPU,
        on_step=lambda d, t: full.append((d, t)),
    )
    assert full == [(1, 4), (2, 4), (3, 4), (4, 4)] and not run_full.interrupted
    with pytest.raises(SvdInterrupted):
        generate(model, picture, BASE, device=CPU, should_stop=lambda: True)


@pytest.mark.parametrize("offload", [True, False])
def test_components_move_to_the_device_in_the_order_they_run(model, picture, monkeypatch, offload) -> None:
    moves = []
    for name, module in model.components.items():
        original = module.to

        def spy(*args, _name=name, _original=original, **kwargs):
            moves.append((_name, str(args[0] if args else kwargs.get("device"))))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "to", spy)
    params = dataclasses.replace(BASE, steps=1, frames=2)
    generate(model, picture, params, device=CPU, memory=SvdMemory(offload=offload))
    stages = ["image_encoder", "vae_encoder", "unet", "decoder"]
    if offload:
        assert moves == [move for name in stages for move in ((name, "cpu"), (name, "cpu"))]
    else:
        assert moves == [(name, "cpu") for name in stages] * 2  # all up front, then once per stage


def test_ff_chunk_reaches_the_unet_and_keeps_the_result(model, picture) -> None:
    plain = arrays(generate(model, picture, BASE, device=CPU, memory=SvdMemory(ff_chunk=0)))
    chunked = arrays(generate(model, picture, BASE, device=CPU, memory=SvdMemory(ff_chunk=7)))
    rows = {m.chunk_rows for m in model.components["unet"].modules() if hasattr(m, "chunk_rows")}
    assert rows == {7}
    assert np.abs(plain.astype(int) - chunked).max() <= 1
    model.components["unet"].set_ff_chunk(0)


def test_memory_plan(model) -> None:
    plan = memory_plan(model, BASE, SvdMemory(), CPU)
    for name, module in model.components.items():
        assert plan.weights[name] == sum(p.numel() * 4 for p in module.parameters()) + sum(
            b.numel() * b.element_size() for b in module.buffers()
        )
    assert plan.activations == max(plan.activation_parts.values())
    assert plan.peak() == sum(plan.weights.values()) + plan.activations  # on the CPU offload saves nothing
    more_frames = memory_plan(model, dataclasses.replace(BASE, frames=12), SvdMemory(), CPU)
    bigger = memory_plan(
        model, dataclasses.replace(BASE, width=2 * WIDTH, height=2 * HEIGHT), SvdMemory(), CPU
    )
    chunked = memory_plan(model, dataclasses.replace(BASE, frames=12, decode_chunk=2), SvdMemory(), CPU)
    assert more_frames.activation_parts["unet"] == pytest.approx(4 * plan.activation_parts["unet"], rel=0.01)
    assert bigger.activation_parts["decoder"] == 4 * plan.activation_parts["decoder"]
    assert chunked.activation_parts["decoder"] * 6 == more_frames.activation_parts["decoder"]
    ff = memory_plan(model, dataclasses.replace(BASE, frames=12), SvdMemory(ff_chunk=16), CPU)
    assert ff.activation_parts["unet"] < more_frames.activation_parts["unet"]
    gpu = memory_plan(model, BASE, SvdMemory(offload=True), torch.device("cuda"))
    assert gpu.peak() == max(gpu.weights[s] + a for s, a in gpu.activation_parts.items())
    line = plan.describe()
    assert line.startswith("SVD memory on cpu (offload on): weights ") and "GiB" in line
    assert f"{sum(plan.weights.values()) / GIB:.2f} GiB" in line and "unet" in line and "\n" not in line


# --- the whole job against diffusers ----------------------------------------------------------


@pytest.mark.parametrize("decode_chunk", [0, 1])
def test_whole_job_equals_diffusers_svd_pipeline(model, picture, decode_chunk) -> None:
    params = dataclasses.replace(
        BASE,
        frames=4,
        steps=2,
        seed=5,
        fps=9,
        motion_bucket_id=40,
        noise_aug_strength=0.1,
        decode_chunk=decode_chunk,
    )
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    ours = arrays(generate(model, picture, params, device=CPU)).astype(np.float64) / 255
    pipe = diffusers_pipeline(model.components)
    with torch.no_grad():
        theirs = pipe(
            picture,
            height=HEIGHT,
            width=WIDTH,
            num_frames=params.frames,
            num_inference_steps=params.steps,
            min_guidance_scale=params.min_guidance,
            max_guidance_scale=params.max_guidance,
            fps=params.fps,
            motion_bucket_id=params.motion_bucket_id,
            noise_aug_strength=params.noise_aug_strength,
            decode_chunk_size=decode_chunk or params.frames,
            generator=torch.Generator().manual_seed(params.seed),
            output_type="np",
        ).frames[0]
    assert theirs.shape == ours.shape == (4, HEIGHT, WIDTH, 3)
    assert theirs.std() > 0.05, "the peer's video must not be flat"
    # ours is rounded to 8 bits: within half a level plus float noise everywhere
    assert np.abs(ours - theirs).max() <= 0.5 / 255 + 1e-4
