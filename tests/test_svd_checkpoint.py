"""SVD checkpoints: detection by key evidence, strict loading, refusals that say what a file is.

The first part drives the generic loader with three toy components laid out under the official
prefixes (so every refusal path is exercised with small, readable state dicts); the second loads
tiny official-layout checkpoints from ``svd_factory`` into the real networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from motion_module.svd.checkpoint import (
    DECODER_PREFIX,
    IMAGE_ENCODER_PREFIX,
    UNET_PREFIX,
    Component,
    SvdCheckpointError,
    default_frames_for,
    load_components,
)

pytestmark = pytest.mark.usefixtures("single_thread")

IGNORED = "conditioner.embedders.0.open_clip.model.logit_scale"


@dataclass(frozen=True)
class ToyConfig:
    width: int


class ToyNet(nn.Module):
    """One linear layer at ``path``, plus a buffer computed at construction (not in the file)."""

    path = ("block",)

    def __init__(self, config: ToyConfig):
        super().__init__()
        module = nn.Module()
        setattr(module, self.path[1], nn.Linear(config.width, config.width))
        setattr(self, self.path[0], module)
        self.register_buffer("table", torch.arange(config.width, dtype=torch.float32), persistent=False)


class ToyUNet(ToyNet):
    path = ("input_blocks", "time_stack")


class ToyDecoder(ToyNet):
    path = ("conv_out", "time_mix_conv")


class ToyImageEncoder(ToyNet):
    path = ("transformer", "proj")


def _config(state) -> ToyConfig:
    weight = next(v for k, v in state.items() if k.endswith(".weight"))
    return ToyConfig(weight.shape[0])


TOY_COMPONENTS = [
    Component("unet", UNET_PREFIX, _config, ToyUNet),
    Component("decoder", DECODER_PREFIX, _config, ToyDecoder),
    Component("image_encoder", IMAGE_ENCODER_PREFIX, _config, ToyImageEncoder, ignored=(IGNORED,)),
]


def toy_state_dict(width: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(width)
    state = {}
    for component in TOY_COMPONENTS:
        module = component.build(ToyConfig(width))
        for key, value in module.state_dict().items():
            state[component.prefix + key] = torch.randn(value.shape, generator=generator)
    state[IGNORED] = torch.tensor(4.6)
    return state


def save(state, path) -> str:
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return str(path)


@pytest.mark.parametrize("name", ["svd.safetensors", "svd_xt.ckpt"])
def test_toy_round_trip_takes_every_tensor(tmp_path, name) -> None:
    state = toy_state_dict()
    built = load_components(save(state, tmp_path / name), TOY_COMPONENTS)
    assert set(built) == {"unet", "decoder", "image_encoder"}
    for component in TOY_COMPONENTS:
        module = built[component.name]
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[component.prefix + key]), key
        assert not any(p.requires_grad for p in module.parameters()) and not module.training
        # the buffer the file does not hold was computed, not left on the meta device
        assert torch.equal(module.table, torch.arange(4.0))


def test_dtype_option_casts_floating_tensors(tmp_path) -> None:
    state = {k: v.half() for k, v in toy_state_dict().items()}
    built = load_components(save(state, tmp_path / "svd.safetensors"), TOY_COMPONENTS, dtype=torch.bfloat16)
    weight = built["unet"].input_blocks.time_stack.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, state[UNET_PREFIX + "input_blocks.time_stack.weight"].to(torch.bfloat16))


def test_a_module_without_computed_buffers_keeps_the_file_tensors(tmp_path) -> None:
    class Plain(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.input_blocks = nn.Module()
            self.input_blocks.time_stack = nn.Linear(config.width, config.width)

    components = [Component("unet", UNET_PREFIX, _config, Plain), *TOY_COMPONENTS[1:]]
    state = toy_state_dict()
    built = load_components(save(state, tmp_path / "svd.safetensors"), components)
    assert torch.equal(
        built["unet"].input_blocks.time_stack.bias, state[UNET_PREFIX + "input_blocks.time_stack.bias"]
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s.update({UNET_PREFIX + "input_blocks.extra": torch.ones(2)}),
            "1 unexpected: input_blocks.extra",
        ),
        (
            lambda s: s.pop(DECODER_PREFIX + "conv_out.time_mix_conv.bias"),
            "1 missing: conv_out.time_mix_conv.bias",
        ),
        (lambda s: s.update({UNET_PREFIX + "input_blocks.time_stack.bias": torch.ones(5)}), "wrong shape"),
        (
            lambda s: s.update({"model_ema.decay": torch.ones(1)}),
            "belong to no part of an SVD checkpoint: model_ema.decay",
        ),
        (
            lambda s: s.update({"conditioner.embedders.0.open_clip.model.transformer.x": torch.ones(1)}),
            "conditioner.embedders.0.open_clip.model.transformer.x",
        ),
    ],
)
def test_any_key_outside_the_networks_and_the_declared_ignored_ones_is_refused(
    tmp_path, change, expected
) -> None:
    state = toy_state_dict()
    change(state)
    with pytest.raises(SvdCheckpointError, match="svd_bad.safetensors") as error:
        load_components(save(state, tmp_path / "svd_bad.safetensors"), TOY_COMPONENTS)
    assert expected in str(error.value)


def _sd15_keys():
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.ones(1),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.ones(1),
        "first_stage_model.decoder.conv_out.weight": torch.ones(1),
    }


FOREIGN = [
    (_sd15_keys, "Stable Diffusion 1.x/2.x image checkpoint"),
    (
        lambda: {
            "model.diffusion_model.input_blocks.0.0.weight": torch.ones(1),
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(1),
        },
        "SDXL image checkpoint",
    ),
    (
        lambda: {"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": torch.ones(1)},
        "AnimateDiff motion module",
    ),
    (
        lambda: {UNET_PREFIX + "input_blocks.1.0.time_stack.in_layers.0.weight": torch.ones(1)},
        "partial SVD file",
    ),
    (
        lambda: {"down_blocks.0.resnets.0.temporal_res_block.conv1.weight": torch.ones(1)},
        "diffusers-format component",
    ),
    (
        lambda: {"foo": torch.ones(1), "bar": torch.ones(1)},
        "none of its 2 keys belong to an SVD checkpoint (e.g. bar, foo)",
    ),
    (lambda: {}, "holds no tensors"),
]


@pytest.mark.parametrize(("make", "expected"), FOREIGN)
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_foreign_files_are_refused_saying_what_they_look_like(tmp_path, make, expected, suffix) -> None:
    path = save(make(), tmp_path / f"foreign{suffix}")
    with pytest.raises(
        SvdCheckpointError, match=f"foreign{suffix} is not a Stable Video Diffusion checkpoint"
    ) as error:
        load_components(path, TOY_COMPONENTS)
    assert expected in str(error.value)


def test_partial_file_names_what_is_missing(tmp_path) -> None:
    state = {k: v for k, v in toy_state_dict().items() if not k.startswith(DECODER_PREFIX)}
    with pytest.raises(
        SvdCheckpointError, match="has the UNet but no temporal VAE decoder$|no temporal VAE decoder\\."
    ):
        load_components(save(state, tmp_path / "unet_only.safetensors"), TOY_COMPONENTS)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "junk.safetensors",
            b"\x00\x01not a safetensors file" * 10,
            "junk.safetensors: not a readable .safetensors file",
        ),
        ("junk.ckpt", b"random bytes, not a pickle" * 10, "junk.ckpt is not a readable checkpoint"),
        ("model.pt", b"", "unsupported file type '.pt'"),
    ],
)
def test_unreadable_or_unsupported_files(tmp_path, name, content, expected) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SvdCheckpointError, match=expected):
        load_components(path, TOY_COMPONENTS)


class _Payload:
    """Unpickling this would create a file: a stand-in for code execution."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path) -> None:
    target = tmp_path / "pwned.txt"
    path = tmp_path / "svd.ckpt"
    state = dict(toy_state_dict())
    state["payload"] = _Payload(str(target))
    torch.save(state, path)
    with pytest.raises(SvdCheckpointError, match="svd.ckpt is a pickle that needs code execution"):
        load_components(path, TOY_COMPONENTS)
    assert not os.path.exists(target)


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("svd.safetensors", 14),
        ("svd_xt.safetensors", 25),
        ("svd_xt_1_1.safetensors", 25),
        ("SVD-XT.ckpt", 25),
        ("svd_image_decoder.safetensors", 14),
        ("/models/xt/svd.safetensors", 14),  # only the file name counts
    ],
)
def test_default_frames_from_the_file_name(name, frames) -> None:
    assert default_frames_for(name) == frames


# --- the real networks from tiny official-layout files -----------------------------------------

svd_factory = pytest.importorskip("svd_factory")


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return svd_factory.tiny_svd_state_dict(seed=5)


@pytest.mark.parametrize(("variant", "fmt", "frames"), [("svd", "safetensors", 14), ("svd_xt", "ckpt", 25)])
def test_tiny_official_file_loads_every_network_strictly(tmp_path, variant, fmt, frames) -> None:
    from motion_module.svd.checkpoint import svd_components
    from motion_module.svd.pipeline import load_svd

    path = svd_factory.write_tiny_svd(tmp_path, variant, fmt, seed=5)
    assert path.name == f"{variant}.{fmt}"
    model = load_svd(path)
    assert model.name == path.name and model.default_frames == frames and model.dtype == torch.float32
    state = svd_factory.tiny_svd_state_dict(seed=5)
    used = set()
    for component in svd_components():
        module = model.components[component.name]
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[component.prefix + key]), component.prefix + key
            used.add(component.prefix + key)
        assert not any(t.is_meta for t in module.parameters())
    # what the file holds beyond the networks is exactly what the components declare ignored
    ignored = tuple(prefix for c in svd_components() for prefix in c.ignored)
    leftover = set(state) - used
    assert leftover and all(key.startswith(ignored) for key in leftover)
    assert any(key.startswith("first_stage_model.encoder.") for key in leftover)
    assert any(key.startswith("conditioner.embedders.0.open_clip.model.") for key in leftover)


def test_tiny_file_in_half_precision_loads_as_asked(tmp_path) -> None:
    from motion_module.svd.pipeline import load_svd

    path = svd_factory.write_tiny_svd(tmp_path / "svd_xt_1_1.safetensors", "svd_xt", dtype=torch.float16)
    model = load_svd(path, dtype=torch.bfloat16)
    assert model.default_frames == 25 and model.dtype == torch.bfloat16
    assert {p.dtype for m in model.components.values() for p in m.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s.pop(UNET_PREFIX + "out.0.bias"),
            "the unet tensors (under 'model.diffusion_model.') do not fit its layout; 1 missing: out.0.bias",
        ),
        (
            lambda s: s.update({DECODER_PREFIX + "up.0.extra.weight": torch.ones(1)}),
            "1 unexpected: up.0.extra.weight",
        ),
        (
            lambda s: s.update({"cond_stage_model.x": torch.ones(1)}),
            "belong to no part of an SVD checkpoint: cond_stage_model.x",
        ),
        (
            lambda s: s.pop("conditioner.embedders.3.encoder.quant_conv.weight"),
            "the vae_encoder tensors (under 'conditioner.embedders.3.encoder.') do not describe a network",
        ),
    ],
)
def test_tiny_official_file_with_a_wrong_key_is_refused(tmp_path, tiny_state, change, expected) -> None:
    from motion_module.svd.pipeline import load_svd

    state = dict(tiny_state)
    change(state)
    path = save(state, tmp_path / "svd_changed.safetensors")
    with pytest.raises(SvdCheckpointError, match="svd_changed.safetensors") as error:
        load_svd(path)
    assert expected in str(error.value)
