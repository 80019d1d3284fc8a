"""The panel's motion-module list follows the checkpoint: SDXL files for SDXL, SD1.5 files for
SD1.5, told by the files' keys (.safetensors headers) and, for pickles, by their names; the
checkpoint's base comes from the loaded model or, while it loads, from its file's keys."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from factories import (
    MINI_SD15,
    MINI_SDXL,
    make_mm_state_dict,
    make_motion_lora,
    to_diffusers_keys,
    to_hotshot_keys,
)
from safetensors.torch import save_file

from motion_module.peek import base_from_keys, file_base
from scripts.animatediff_webui import host_model, model_choices


@pytest.mark.parametrize(
    ("family", "convert", "expected"),
    [
        ("v3", dict, "sd15"),
        ("v2", to_diffusers_keys, "sd15"),
        ("sdxl_beta", dict, "sdxl"),
        ("hotshot_xl", to_hotshot_keys, "sdxl"),
    ],
)
def test_base_from_keys_in_every_key_style(family, convert, expected):
    assert base_from_keys(convert(make_mm_state_dict(family, device="meta"))) == expected


def test_files_without_motion_sites_have_no_base(tmp_path):
    assert base_from_keys(["model.diffusion_model.input_blocks.0.0.weight"]) is None
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    assert file_base(lora) is None
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"no header")
    assert file_base(broken) is None
    assert file_base(tmp_path / "mm_sdxl.ckpt") is None  # pickles are not read


@pytest.fixture
def folder(tmp_path):
    """SD1.5 and SDXL modules, two of them with names that say nothing (or the wrong thing)."""
    save_file(make_mm_state_dict("v3", MINI_SD15), str(tmp_path / "mm_sd15_v3.safetensors"))
    save_file(make_mm_state_dict("v1", MINI_SD15), str(tmp_path / "temporaldiff-v1.safetensors"))
    save_file(make_mm_state_dict("sdxl_beta", MINI_SDXL), str(tmp_path / "mm_sdxl_v10_beta.safetensors"))
    save_file(make_mm_state_dict("hotshot_xl", MINI_SDXL), str(tmp_path / "motion_sd1_named.safetensors"))
    (tmp_path / "mm_sd_v15_v2.ckpt").write_bytes(b"")  # a pickle: its name decides
    (tmp_path / "hsxl.ckpt").write_bytes(b"")
    save_file(make_motion_lora(MINI_SD15, rank=2), str(tmp_path / "v2_lora_PanLeft.safetensors"))
    return tmp_path


def test_the_list_follows_the_files_keys_then_their_names(folder):
    names = sorted(p.name for p in folder.iterdir())
    assert model_choices.fitting(str(folder), names, "sdxl") == [
        "hsxl.ckpt",
        "mm_sdxl_v10_beta.safetensors",
        "motion_sd1_named.safetensors",
    ]
    assert model_choices.fitting(str(folder), names, "sd15") == [
        "mm_sd15_v3.safetensors",
        "mm_sd_v15_v2.ckpt",
        "temporaldiff-v1.safetensors",
        "v2_lora_PanLeft.safetensors",  # no motion sites in its keys, nothing in its name
    ]
    assert model_choices.fitting(str(folder), names, None) == names


def fake_sd_models(monkeypatch, loaded=None, checkpoint=None):
    sd_models = types.ModuleType("modules.sd_models")
    sd_models.model_data = SimpleNamespace(sd_model=loaded)
    sd_models.select_checkpoint = lambda: SimpleNamespace(filename=str(checkpoint))
    modules = types.ModuleType("modules")
    modules.sd_models = sd_models
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)


def test_checkpoint_base_from_the_loaded_model(monkeypatch):
    fake_sd_models(
        monkeypatch, loaded=SimpleNamespace(is_sdxl=True, is_sd1=False, is_sd2=False, is_sd3=False)
    )
    assert model_choices.checkpoint_base() == "sdxl"
    fake_sd_models(
        monkeypatch, loaded=SimpleNamespace(is_sdxl=False, is_sd1=False, is_sd2=True, is_sd3=False)
    )
    assert model_choices.checkpoint_base() is None


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("conditioner.embedders.1.model.ln_final.weight", "sdxl"),
        ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd15"),
        ("cond_stage_model.model.ln_final.weight", None),  # SD2
    ],
)
def test_checkpoint_base_while_the_webui_loads_it(monkeypatch, tmp_path, key, expected):
    checkpoint = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(2), "model.diffusion_model.out.2.weight": torch.zeros(2)}, str(checkpoint))
    fake_sd_models(monkeypatch, checkpoint=checkpoint)
    assert model_choices.checkpoint_base() == expected


def test_a_module_for_the_other_base_is_refused_naming_both_sides():
    sd_model = SimpleNamespace(sd_checkpoint_info=SimpleNamespace(name_for_extra="juggernautXL"))
    host = host_model.HostModel(sd_model, torch.nn.Linear(1, 1), "sdxl", torch.float32, torch.device("cpu"))
    text = host_model.base_mismatch("mm_sd15_v3.safetensors", "AnimateDiff v3", "sd15", host, ["hs.ckpt"])
    assert text == (
        "AnimateDiff: model = 'mm_sd15_v3.safetensors' (AnimateDiff v3) is made for SD1.5 checkpoints, "
        "but the loaded checkpoint juggernautXL is SDXL; pick a motion module made for SDXL "
        "(available: hs.ckpt) or load an SD1.5 checkpoint"
    )
