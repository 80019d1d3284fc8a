"""Motion-LoRA key forms: official, diffusers and A1111-converted files carrying the same numbers
give every motion layer the same delta; the v3 adapter's keys name the ldm UNet's attention
layers; files that fit no layer, or layers of other shapes, are refused naming the file."""

from __future__ import annotations

import pytest
import torch
from factories import (
    MINI_SD15,
    MINI_SDXL,
    converted_lora_keys,
    diffusers_lora_keys,
    make_full_v3_adapter,
    make_mm_state_dict,
    make_motion_lora,
    make_sd15_unet,
)

from motion_module.detect import detect
from motion_module.loading import build_module
from motion_module.motion_lora import (
    DOWN,
    UP,
    MotionLoraError,
    fit_to_layers,
    lora_form,
    to_layer_names,
)
from motion_module.spec import Family

pytestmark = pytest.mark.usefixtures("single_thread")


def motion_module(family: Family):
    found = detect(make_mm_state_dict(family, seed=3), f"{family.value}.safetensors")
    return build_module(found, "cpu", torch.float32)


def lora_layers(model) -> dict[str, torch.nn.Linear]:
    """Every Linear of the motion module under the name the Lora extension knows it by."""
    return {
        name.replace(".", "_"): module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def shapes(layers) -> dict[str, tuple[int, ...]]:
    return {name: tuple(module.weight.shape) for name, module in layers.items()}


def apply(model, converted: dict[str, torch.Tensor], strength: float = 1.0) -> dict[str, torch.Tensor]:
    """W + s · up @ down for every layer the converted file names (no alpha: scale 1), as the
    official loader and the WebUI's Lora extension merge a LoRA; returns the merged weights."""
    layers = lora_layers(model)
    merged = {}
    for key in converted:
        name, _, half = key.partition(".")
        if half != DOWN:
            continue
        up, down = converted[f"{name}.{UP}"], converted[key]
        merged[name] = layers[name].weight + strength * (up @ down)
    return merged


FORMS = {
    "official": lambda sd: sd,
    "diffusers": diffusers_lora_keys,
    "converted": converted_lora_keys,
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_recognised(form):
    assert lora_form(list(FORMS[form](make_motion_lora()))) == form


def test_other_files_are_not_motion_loras():
    kohya = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}
    assert lora_form(list(kohya)) is None
    assert lora_form(list(make_mm_state_dict(Family.V2))) is None
    assert lora_form(list(make_full_v3_adapter())) == "adapter"
    # a spatial LoRA in diffusers names: attention keys among others are not the v3 adapter
    spatial = [k.replace(".processor.to_q_lora.down.", ".to_q.lora_A.") for k in make_full_v3_adapter()]
    assert lora_form(spatial) == "adapter"
    assert lora_form([*spatial, "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"]) is None
    # one file mixing two forms is none of them
    official = list(make_motion_lora(MINI_SD15, rank=2))
    assert lora_form([*official, *converted_lora_keys(make_motion_lora(MINI_SD15, rank=2))]) is None


def test_three_forms_with_the_same_numbers_give_the_same_layer_deltas():
    """168 layers (21 sites × 2 attention blocks × q/k/v/out): each form converts to the same
    keys and tensors bit for bit, and merging them changes the same weights by the same amounts."""
    model = motion_module(Family.V2)
    official = make_motion_lora(MINI_SD15, rank=4, seed=5)
    converted = {form: to_layer_names(make(official)) for form, make in FORMS.items()}
    reference = converted["converted"]
    assert len(reference) == 21 * 2 * 4 * 2
    for form, result in converted.items():
        assert result.keys() == reference.keys(), form
        assert all(torch.equal(result[k], reference[k]) for k in reference), form
    layers = lora_layers(model)
    assert {k.partition(".")[0] for k in reference} <= set(layers)
    merged = {form: apply(model, result) for form, result in converted.items()}
    for form in ("official", "diffusers"):
        assert all(torch.equal(merged[form][n], merged["converted"][n]) for n in merged["converted"])
    # one layer checked by hand: attention block 1's output projection of up level 2, site 2
    stem = "up_blocks.2.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1"
    up, down = (official[f"{stem}.processor.to_out_lora.{h}.weight"] for h in ("up", "down"))
    target = model.get_submodule(f"{stem}.to_out.0")
    delta = merged["diffusers"][f"{stem}.to_out.0".replace(".", "_")] - target.weight
    assert torch.allclose(delta, up @ down, atol=1e-5)
    assert delta.abs().max() > 0.5  # random rank-4 factors: a real change, not rounding


def test_peft_and_lora_down_spellings_convert_like_the_processor_form():
    official = make_motion_lora(MINI_SD15, rank=2, seed=1)
    diffusers = diffusers_lora_keys(official)
    spelled = {}
    for key, value in diffusers.items():
        stem, _, rest = key.partition(".processor.")
        projection, _, half = rest.partition("_lora.")
        projection = "to_out.0" if projection == "to_out" else projection
        letter = "A" if half.startswith("down") else "B"
        spelled[f"{stem}.{projection}.lora_{letter}.weight"] = value
    assert lora_form(list(spelled)) == "diffusers"
    a, b = to_layer_names(spelled), to_layer_names(official)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_kohya_style_prefix_on_converted_keys_is_dropped():
    converted = converted_lora_keys(make_motion_lora(MINI_SD15, rank=2))
    prefixed = {"lora_unet_" + k: v for k, v in converted.items()}
    assert lora_form(list(prefixed)) == "converted"
    assert to_layer_names(prefixed).keys() == converted.keys()


def test_non_tensors_and_foreign_keys_are_left_out():
    official = make_motion_lora(MINI_SD15, rank=2)
    extra = {**official, "animatediff_config": {"lora": True}, "something.else": torch.zeros(2)}
    assert to_layer_names(extra).keys() == to_layer_names(official).keys()


def test_a_v2_lora_on_a_module_without_mid_site_skips_only_the_mid_layers():
    model = motion_module(Family.V3)
    converted = to_layer_names(make_motion_lora(MINI_SD15))
    fit = fit_to_layers(converted, shapes(lora_layers(model)), "v2_lora_ZoomIn.ckpt", "AnimateDiff v3")
    assert len(fit.state_dict) == 20 * 8 * 2
    assert len(fit.skipped) == 8 and all(name.startswith("mid_block_") for name in fit.skipped)


def test_a_file_that_matches_no_layer_is_refused_naming_it():
    model = motion_module(Family.V3)
    nowhere = {"nowhere_" + k: v for k, v in converted_lora_keys(make_motion_lora()).items()}
    assert lora_form(list(nowhere)) == "converted"
    with pytest.raises(MotionLoraError, match=r"LoRA file nowhere\.safetensors: none of its 168 layers"):
        fit_to_layers(to_layer_names(nowhere), shapes(lora_layers(model)), "nowhere.safetensors", "v3")


def test_an_sd15_lora_on_an_sdxl_module_is_refused_for_its_shapes():
    """Names of levels 0-2 exist in both; the widths of up levels 1-2 differ (128/64 vs 64/32)."""
    model = motion_module(Family.SDXL_BETA)
    converted = to_layer_names(make_motion_lora(MINI_SD15))
    with pytest.raises(
        MotionLoraError, match=r"v2_lora_PanLeft\.ckpt does not fit the loaded SDXL beta: 48 of"
    ):
        fit_to_layers(converted, shapes(lora_layers(model)), "v2_lora_PanLeft.ckpt", "SDXL beta")


def test_an_sdxl_motion_lora_fits_an_sdxl_module():
    model = motion_module(Family.HOTSHOT_XL)
    official = make_motion_lora(MINI_SDXL, mid=False)
    fit = fit_to_layers(to_layer_names(official), shapes(lora_layers(model)), "hs.safetensors", "HotShot-XL")
    assert len(fit.state_dict) == 15 * 8 * 2 and fit.skipped == ()


def test_v3_adapter_keys_name_every_attention_projection_of_the_ldm_unet():
    """16 transformer blocks × attn1/attn2 × q/k/v/out = 128 layers, each an existing Linear of
    the WebUI's ldm UNet (named under ``diffusion_model``) whose shape the file's halves fit."""
    unet = make_sd15_unet()
    layers = {
        ("diffusion_model." + name).replace(".", "_"): tuple(m.weight.shape)
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    adapter = make_full_v3_adapter(MINI_SD15, context_dim=64)
    converted = to_layer_names(adapter)
    fit = fit_to_layers(converted, layers, "v3_sd15_adapter.ckpt", "SD1.5 UNet")
    assert len(fit.state_dict) == 16 * 8 * 2 and fit.skipped == ()
    key = "diffusion_model_output_blocks_11_1_transformer_blocks_0_attn2_to_k"
    up = adapter["up_blocks.3.attentions.2.transformer_blocks.0.attn2.processor.to_k_lora.up.weight"]
    assert torch.equal(fit.state_dict[f"{key}.{UP}"], up)
    assert "diffusion_model_middle_block_1_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in converted
    assert "diffusion_model_input_blocks_8_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in converted
