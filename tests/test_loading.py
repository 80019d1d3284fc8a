"""Loading: file formats round-trip, strict checks name keys, pickles needing code are refused."""

from __future__ import annotations

import pickle

import pytest
import torch
from factories import (
    make_mm_state_dict,
    to_diffusers_keys,
    with_non_tensor,
    with_unet_keys,
    wrap_state_dict,
)
from safetensors.torch import save_file

from motion_module.detect import MotionModuleFormatError
from motion_module.layers import Linear
from motion_module.loading import (
    LoadedMotionModule,
    MotionModuleCache,
    MotionModuleLoadError,
    file_hash,
    load_motion_module,
)
from motion_module.spec import Family

pytestmark = pytest.mark.usefixtures("single_thread")


def _assert_weights_equal(loaded: LoadedMotionModule, sd: dict) -> None:
    state = loaded.model.state_dict()
    assert set(state) == set(sd)
    for key, value in sd.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


def test_safetensors_round_trip(tmp_path) -> None:
    sd = make_mm_state_dict(Family.V3)
    path = tmp_path / "v3_sd15_mm.safetensors"
    save_file(sd, str(path))
    loaded = load_motion_module(path, "cpu", torch.float32)
    assert loaded.spec.family == Family.V3 and loaded.variant == "AnimateDiff v3"
    assert loaded.hash == file_hash(path) and len(loaded.hash) == 10
    _assert_weights_equal(loaded, sd)
    assert not any(p.requires_grad for p in loaded.model.parameters())


@pytest.mark.parametrize("wrap", [wrap_state_dict, with_non_tensor, with_unet_keys])
def test_weights_only_ckpt_with_container_quirks(tmp_path, wrap) -> None:
    sd = make_mm_state_dict(Family.V1)
    path = tmp_path / "mm_sd_v15.ckpt"
    torch.save(wrap(sd), path)
    loaded = load_motion_module(path)
    assert loaded.spec.family == Family.V1 and loaded.variant == "mm_sd_v15"
    _assert_weights_equal(loaded, sd)


def test_fp16_file_into_fp32_module_and_back(tmp_path) -> None:
    sd = make_mm_state_dict(Family.V2)
    half = {k: v.half() for k, v in sd.items()}
    path16 = tmp_path / "mm_sd15_v2.safetensors"
    save_file(half, str(path16))
    loaded = load_motion_module(path16, "cpu", torch.float32)
    assert all(p.dtype == torch.float32 for p in loaded.model.state_dict().values())
    _assert_weights_equal(loaded, half)  # exact: fp16 values are representable in fp32

    path32 = tmp_path / "mm_sd_v15_v2.ckpt"
    torch.save(sd, path32)
    loaded16 = load_motion_module(path32, "cpu", torch.float16)
    assert all(p.dtype == torch.float16 for p in loaded16.model.state_dict().values())
    _assert_weights_equal(loaded16, half)


def test_fp8_storage_keeps_norms_in_working_dtype(tmp_path) -> None:
    path = tmp_path / "mm_sd_v15.safetensors"
    save_file(make_mm_state_dict(Family.V1), str(path))
    loaded = load_motion_module(path, "cpu", torch.float32, storage_dtype=torch.float8_e4m3fn)
    linears = [m for m in loaded.model.modules() if isinstance(m, Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    site = loaded.model.down_blocks[0].motion_modules[0]
    assert site.temporal_transformer.norm.weight.dtype == torch.float32
    with torch.no_grad():
        y = site(torch.randn(8, 32, 2, 2), 4)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_diffusers_format_file_loads(tmp_path) -> None:
    sd = make_mm_state_dict(Family.LIGHTNING)
    path = tmp_path / "animatediff_lightning_4step_diffusers.safetensors"
    save_file(to_diffusers_keys(sd), str(path))
    loaded = load_motion_module(path)
    assert loaded.spec.family == Family.LIGHTNING
    _assert_weights_equal(loaded, sd)


def test_animatelcm_without_pe_recomputes_table(tmp_path) -> None:
    path = tmp_path / "AnimateLCM_sd15_t2v.ckpt"
    torch.save(make_mm_state_dict(Family.ANIMATELCM), path)
    loaded = load_motion_module(path)
    assert loaded.model.max_frames == 64
    assert not any(k.endswith(".pe") for k in loaded.model.state_dict())


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/h1_pickle_ran_SENTINEL",))


def test_pickle_needing_code_is_refused_and_nothing_runs(tmp_path) -> None:
    import os

    sentinel = "/tmp/h1_pickle_ran_SENTINEL"
    if os.path.exists(sentinel):
        os.remove(sentinel)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"down_blocks.0.motion_modules.0.x": _RunsCode()}, f, protocol=2)
    with pytest.raises(MotionModuleLoadError, match="needs code execution.*refused.*nothing in it ran"):
        load_motion_module(path)
    assert not os.path.exists(sentinel)


def test_strict_check_names_missing_unexpected_and_misshapen(tmp_path) -> None:
    sd = make_mm_state_dict(Family.V3)
    missing = "down_blocks.1.motion_modules.0.temporal_transformer.proj_out.bias"
    misshapen = "up_blocks.0.motion_modules.2.temporal_transformer.proj_in.weight"
    del sd[missing]
    sd[misshapen] = torch.zeros(3, 3)
    sd["down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"] = torch.zeros(2)
    path = tmp_path / "v3_broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(MotionModuleLoadError) as info:
        load_motion_module(path)
    text = str(info.value)
    assert missing in text and "1 missing" in text
    assert "extra.weight" in text and "1 unexpected" in text
    assert misshapen in text and "(3, 3)" in text and "(128, 128)" in text


def test_unsupported_suffix_and_foreign_file(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(MotionModuleLoadError, match="unsupported file type '.onnx'"):
        load_motion_module(path)
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(MotionModuleFormatError, match="sd15.safetensors: no motion-module keys"):
        load_motion_module(path)


@pytest.mark.parametrize("content", [b"random bytes, not a pickle" * 10, b""])
def test_junk_ckpt_is_refused_as_unreadable(tmp_path, content) -> None:
    path = tmp_path / "junk.ckpt"
    path.write_bytes(content)
    with pytest.raises(MotionModuleLoadError, match="junk.ckpt is not a readable checkpoint"):
        load_motion_module(path)


def test_cache_keeps_module_while_file_unchanged(tmp_path) -> None:
    path = tmp_path / "mm_sd_v15.safetensors"
    save_file(make_mm_state_dict(Family.V1), str(path))
    cache = MotionModuleCache()
    first = cache.get(path)
    assert cache.get(path) is first
    assert cache.get(path, dtype=torch.float16) is not first
    again = cache.get(path)
    save_file(make_mm_state_dict(Family.V1, seed=1), str(path))  # new content (size equal, mtime new)
    import os

    os.utime(path, ns=(1, 1))
    assert cache.get(path) is not again
    cache.clear()
    assert cache.current is None
