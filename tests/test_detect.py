"""Detection: fabricated state dicts with real key names (mini and full-size shapes) → family."""

from __future__ import annotations

import logging

import pytest
import torch
from factories import (
    FULL_SD15,
    FULL_SDXL,
    make_mm_state_dict,
    make_motion_lora,
    make_pia,
    make_sparse_ctrl,
    make_v3_adapter,
    to_diffusers_keys,
    to_hotshot_keys,
)

from motion_module.detect import MotionModuleFormatError, detect
from motion_module.spec import SPECS, Family, alphas_cumprod

pytestmark = pytest.mark.usefixtures("single_thread")


# family, expected keys at full size, mid block, PE rows, GN across frames in the UNet / module
TABLE = [
    (Family.V1, 560, False, 24, True, False),
    (Family.V2, 588, True, 32, False, False),
    (Family.V3, 560, False, 32, False, False),
    (Family.ANIMATELCM, 546, True, 64, False, False),
    (Family.LIGHTNING, 588, True, 32, False, False),
    (Family.SDXL_BETA, 420, False, 32, False, True),
    (Family.HOTSHOT_XL, 420, False, 24, True, False),
]


def _hint(family: Family) -> str:
    return "animatediff_lightning_4step_comfyui.safetensors" if family == Family.LIGHTNING else "model.ckpt"


@pytest.mark.parametrize("family,keys,mid,pe,unet_gn,mm_gn", TABLE)
@pytest.mark.parametrize("size", ["mini", "full"])
def test_family_table(family, keys, mid, pe, unet_gn, mm_gn, size) -> None:
    if size == "full":
        widths = FULL_SD15 if SPECS[family].base == "sd15" else FULL_SDXL
        sd = make_mm_state_dict(family, widths, device="meta")  # shapes only: no 1.7 GB allocation
        assert len(sd) == keys
    else:
        sd = make_mm_state_dict(family)
    found = detect(sd, _hint(family))
    spec = found.spec
    assert spec.family == family
    assert (spec.mid_block, spec.pe_length) == (mid, pe)
    assert (spec.gn_across_frames_in_unet, spec.gn_across_frames_in_module) == (unet_gn, mm_gn)
    assert spec.base == ("sd15" if len(found.plan.down) == 4 else "sdxl")
    if size == "full":
        assert found.plan.down[0] == (320, 320)


def test_full_v1_parameter_count_matches_published_files() -> None:
    sd = make_mm_state_dict(Family.V1, FULL_SD15, device="meta")
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(".pe"))
    assert params == 417_137_600


@pytest.mark.parametrize(
    "name,variant",
    [
        ("mm_sd_v14.ckpt", "mm_sd_v14"),
        ("mm_sd_v15.ckpt", "mm_sd_v15"),
        ("temporaldiff-v1-animatediff.safetensors", "TemporalDiff"),
        ("mm-Stabilized_high.pth", "mm-Stabilized_high"),
    ],
)
def test_v1_variants_named_from_the_file(name: str, variant: str) -> None:
    assert detect(make_mm_state_dict(Family.V1), name).variant == variant


def test_lightning_and_v2_share_keys_and_the_name_decides(caplog) -> None:
    sd = make_mm_state_dict(Family.V2)
    assert detect(sd, "mm_sd_v15_v2.ckpt").spec.family == Family.V2
    with caplog.at_level(logging.INFO, logger="animatediff"):
        assert detect(sd, "animatediff_lightning_8step.safetensors").spec.family == Family.LIGHTNING
    assert "file name" in caplog.text


def test_v1_v3_without_pe_need_a_name_hint(caplog) -> None:
    sd = make_mm_state_dict(Family.V3, include_pe=False)
    with pytest.raises(MotionModuleFormatError, match="cannot tell v1 from v3.*positional table absent"):
        detect(sd, "motion.safetensors")
    with caplog.at_level(logging.INFO, logger="animatediff"):
        assert detect(sd, "v3_sd15_mm.safetensors").spec.family == Family.V3
        assert detect(sd, "mm_sd_v15.safetensors").spec.family == Family.V1
    assert caplog.text.count("chose") == 2


def test_diffusers_format_converts_back() -> None:
    original = make_mm_state_dict(Family.LIGHTNING)
    found = detect(to_diffusers_keys(original), "animatediff_lightning_4step_diffusers.safetensors")
    assert found.spec.family == Family.LIGHTNING and found.evidence.source_format == "diffusers"
    assert set(found.state_dict) == set(original)
    assert all(torch.equal(found.state_dict[k], original[k]) for k in original)


def test_hotshot_original_keys_convert() -> None:
    original = make_mm_state_dict(Family.HOTSHOT_XL)
    found = detect(to_hotshot_keys(original), "hsxl_temporal_layers.safetensors")
    assert found.spec.family == Family.HOTSHOT_XL and found.evidence.source_format == "hotshot"
    assert set(found.state_dict) == set(original)


def test_unrelated_unet_keys_are_dropped() -> None:
    sd = {
        **make_mm_state_dict(Family.V1),
        "conv_in.weight": torch.zeros(32, 4, 3, 3),
        "time_embedding.linear_1.weight": torch.zeros(4, 4),
    }
    assert all("motion_modules" in k for k in detect(sd).state_dict)


@pytest.mark.parametrize(
    "make,message",
    [
        (make_motion_lora, "motion LoRA"),
        (make_v3_adapter, "domain adapter"),
        (make_sparse_ctrl, "SparseCtrl"),
        (make_pia, "PIA"),
        (
            lambda: {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)},
            "LoRA for the WebUI",
        ),
    ],
)
def test_foreign_files_are_refused_by_name(make, message: str) -> None:
    with pytest.raises(MotionModuleFormatError, match=message):
        detect(make())


def test_truncated_file_reports_evidence() -> None:
    sd = {k: v for k, v in make_mm_state_dict(Family.V2).items() if not k.startswith("up_blocks.3")}
    with pytest.raises(
        MotionModuleFormatError, match=r"truncated.*down levels 4, up levels 3, mid block yes"
    ):
        detect(sd)


def test_unknown_layout_lists_evidence() -> None:
    sd = make_mm_state_dict(Family.V1, pe_len=16)
    with pytest.raises(
        MotionModuleFormatError,
        match=r"unknown motion-module layout.*positional table 16 rows.*down widths \[\[32, 32\]",
    ):
        detect(sd)


def test_not_a_motion_module() -> None:
    with pytest.raises(MotionModuleFormatError, match="no motion-module keys"):
        detect({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, "sd15.safetensors")


def test_beta_schedules_match_diffusers_schedulers() -> None:
    from diffusers import DDPMScheduler

    for family, kind, end in ((Family.V2, "linear", 0.012), (Family.SDXL_BETA, "scaled_linear", 0.020)):
        ours = alphas_cumprod(SPECS[family])
        ref = DDPMScheduler(beta_schedule=kind, beta_start=0.00085, beta_end=end).alphas_cumprod
        assert ours.shape == (1000,) and ours.dtype == torch.float32
        assert torch.allclose(ours, ref.float(), rtol=1e-5, atol=0)
    assert not torch.allclose(alphas_cumprod(SPECS[Family.V1]), alphas_cumprod(SPECS[Family.SDXL_BETA]))
