"""SVD jobs on a tiny official-layout checkpoint: frames, seeds, chunked decoding, stopping,
offloading, the memory plan, and the whole job against diffusers' StableVideoDiffusionPipeline
built from the same weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from svd_factory import TINY, write_random_svd, write_tiny_svd
from svd_peers import diffusers_pipeline

from motion_module.svd.checkpoint import SvdCheckpointError, TensorFile
from motion_module.svd.memory import GIB
from motion_module.svd.params import SvdParams
from motion_module.svd.pipeline import (
    STAGES,
    SvdInterrupted,
    SvdMemory,
    generate,
    load_svd,
    load_svd_shapes,
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
    progress: list[tuple[int, int]] = []

    def should_stop() -> bool:  # asked before each step and each UNet block: stop after step 2
        return len(progress) >= 2

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


def test_a_stop_inside_a_step_abandons_it_and_keeps_the_last_finished_one(model, picture) -> None:
    """At full size a step is minutes on a CPU: the UNet asks should_stop before each block. A
    stop in the middle of step 3 gives the frames of a stop just before it."""
    unet = model.components["unet"]
    blocks = len(unet.input_blocks) + 1 + len(unet.output_blocks)
    asked, stages = [], []

    def should_stop() -> bool:  # asked before each step, then before each block of its UNet call
        asked.append(True)
        return len(asked) > 2 * (1 + blocks) + 1 + blocks // 2

    params = dataclasses.replace(BASE, steps=5)
    inside = generate(model, picture, params, device=CPU, should_stop=should_stop, on_stage=stages.append)
    assert inside.interrupted and inside.steps_done == 2 and stages == list(STAGES)
    calls_before_third_step = [0]

    def before_third() -> bool:
        calls_before_third_step[0] += 1
        return calls_before_third_step[0] > 2 * (1 + blocks)

    between = generate(model, picture, params, device=CPU, should_stop=before_third)
    assert between.steps_done == 2 and np.array_equal(arrays(inside), arrays(between))
    assert not unet._forward_pre_hooks  # the checks are gone after the job
    first_step: list[bool] = []
    with pytest.raises(SvdInterrupted):  # stopped inside the first step: nothing to decode
        generate(
            model,
            picture,
            params,
            device=CPU,
            should_stop=lambda: first_step.append(1) or len(first_step) > 3,
        )
    assert not unet._forward_pre_hooks
    assert not run(model, picture).interrupted  # a job without should_stop is not affected


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


@pytest.mark.parametrize(
    ("file_dtype", "dtype"),
    [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.float32)],
)
def test_the_plan_from_the_header_is_the_loaded_models_byte_for_byte(
    tmp_path, monkeypatch, file_dtype, dtype
) -> None:
    path = write_tiny_svd(tmp_path / "svd_xt.safetensors", "svd_xt", dtype=file_dtype)
    loaded = load_svd(path, dtype=dtype)

    def no_weights(self, key):
        raise AssertionError(f"the header plan read the weight {key}")

    monkeypatch.setattr(TensorFile, "tensor", no_weights)
    shapes = load_svd_shapes(path, dtype=dtype)
    assert shapes.default_frames == 25 and shapes.dtype == dtype and shapes.name == "svd_xt.safetensors"
    for name, module in shapes.components.items():
        tensors = [*module.parameters(), *module.buffers()]
        assert all(t.is_meta for t in tensors), name
        reference = dict(loaded.components[name].state_dict())
        assert {k: (v.shape, v.dtype) for k, v in module.state_dict().items()} == {
            k: (v.shape, v.dtype) for k, v in reference.items()
        }
    cases = [
        (BASE, SvdMemory(), CPU),
        (
            dataclasses.replace(BASE, frames=0, decode_chunk=4, width=256, height=144),
            SvdMemory(ff_chunk=64),
            CPU,
        ),
        (dataclasses.replace(BASE, frames=9), SvdMemory(offload=True), torch.device("cuda")),
    ]
    for params, memory, device in cases:
        planned, actual = (
            memory_plan(shapes, params, memory, device),
            memory_plan(loaded, params, memory, device),
        )
        assert planned == actual and planned.describe() == actual.describe()


def test_the_header_plan_refuses_what_loading_refuses_and_leaves_a_ckpt_to_the_load(tmp_path) -> None:
    ckpt = write_tiny_svd(tmp_path / "svd.ckpt", fmt="ckpt")
    assert load_svd_shapes(ckpt) is None and load_svd(ckpt).default_frames == 14
    from safetensors.torch import save_file

    save_file({"motion_modules.0.weight": torch.zeros(2)}, str(tmp_path / "mm.safetensors"))
    with pytest.raises(SvdCheckpointError) as by_header:
        load_svd_shapes(tmp_path / "mm.safetensors")
    with pytest.raises(SvdCheckpointError) as by_load:
        load_svd(tmp_path / "mm.safetensors")
    assert str(by_header.value) == str(by_load.value) and "motion module" in str(by_header.value)


def test_a_checkpoint_written_tensor_by_tensor_loads_strictly(tmp_path) -> None:
    """``write_random_svd`` (used for the full-size file) gives an official-layout file the loader
    takes strictly, in the dtype asked, with the tiny factory's keys."""
    path = write_random_svd(tmp_path / "svd_xt.safetensors", TINY, dtype=torch.bfloat16, seed=3)
    assert not (tmp_path / "svd_xt.safetensors.partial").exists()
    model = load_svd(path, dtype=torch.bfloat16)
    reference = write_tiny_svd(tmp_path / "svd.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as written, safe_open(str(reference), "pt") as tiny:
        assert sorted(written.keys()) == sorted(tiny.keys())
        assert {written.get_slice(k).get_dtype() for k in written.keys()} == {"BF16"}
        weight = written.get_tensor("model.diffusion_model.input_blocks.1.0.in_layers.2.weight").float()
    assert 0.5 < float(weight.std() * (weight[0].numel() ** 0.5)) < 2  # scaled by 1/sqrt(fan-in)
    plan = memory_plan(model, BASE, SvdMemory(), CPU)
    assert plan == memory_plan(load_svd_shapes(path, dtype=torch.bfloat16), BASE, SvdMemory(), CPU)


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
