"""Injection into the real ldm UNetModel: placement (docs/checkpoint-layouts.md), exact removal,
refusals."""

from __future__ import annotations

import pytest
import torch
from factories import make_mm_state_dict, make_sd15_unet, make_sdxl_unet, unet_inputs
from torch import nn

import motion_module.injection as injection_module
from motion_module.detect import detect
from motion_module.frames import FrameLayout
from motion_module.injection import InjectionError, MotionBlock, inject
from motion_module.loading import build_module
from motion_module.spec import Family

pytestmark = pytest.mark.usefixtures("single_thread")


FRAMES = 4


def motion(family: Family, seed: int = 0, zero_out: bool = False):
    found = detect(make_mm_state_dict(family, seed=seed), "")
    model = build_module(found, "cpu", torch.float32)
    if zero_out:
        for site in model.site_modules().values():
            nn.init.zeros_(site.temporal_transformer.proj_out.weight)
            nn.init.zeros_(site.temporal_transformer.proj_out.bias)
    return found.spec, model


@pytest.fixture(scope="module")
def sd15():
    return make_sd15_unet()


@pytest.fixture(scope="module")
def sdxl():
    return make_sdxl_unet()


def snapshot(unet: nn.Module):
    """Identity of every module, every parameter/buffer value, and instance-level overrides."""
    return (
        [(name, id(m), tuple(m._modules)) for name, m in unet.named_modules()],
        {k: v.clone() for k, v in unet.state_dict(keep_vars=True).items()},
        {name: sorted(vars(m)) for name, m in unet.named_modules()},
    )


def assert_same(unet: nn.Module, before) -> None:
    after = snapshot(unet)
    assert after[0] == before[0]
    assert after[1].keys() == before[1].keys()
    assert all(torch.equal(after[1][k], before[1][k]) for k in before[1])
    assert after[2] == before[2]


def run(unet, rows=2 * FRAMES, seed=0, layout=None, x=None):
    args = unet_inputs(rows, size=8, seed=seed)
    if x is not None:
        args = (x, *args[1:])
    with torch.no_grad():
        if layout is None:
            return unet(*args)
        with layout.using(FRAMES):
            return unet(*args)


def kinds(block: nn.Module) -> list[str]:
    short = {
        "ResBlock": "R",
        "SpatialTransformer": "ST",
        "MotionBlock": "M",
        "Upsample": "U",
        "Downsample": "D",
    }
    return [short.get(type(m).__name__, type(m).__name__) for m in block]


SD15_IN = {
    1: "R ST M",
    2: "R ST M",
    4: "R ST M",
    5: "R ST M",
    7: "R ST M",
    8: "R ST M",
    10: "R M",
    11: "R M",
    0: "Conv2d",
    3: "D",
    6: "D",
    9: "D",
}
SD15_OUT = {
    0: "R M",
    1: "R M",
    2: "R M U",
    3: "R ST M",
    4: "R ST M",
    5: "R ST M U",
    6: "R ST M",
    7: "R ST M",
    8: "R ST M U",
    9: "R ST M",
    10: "R ST M",
    11: "R ST M",
}
SDXL_IN = {
    0: "Conv2d",
    1: "R M",
    2: "R M",
    3: "D",
    4: "R ST M",
    5: "R ST M",
    6: "D",
    7: "R ST M",
    8: "R ST M",
}
SDXL_OUT = {
    0: "R ST M",
    1: "R ST M",
    2: "R ST M U",
    3: "R ST M",
    4: "R ST M",
    5: "R ST M U",
    6: "R M",
    7: "R M",
    8: "R M",
}


@pytest.mark.parametrize(
    "unet_name,family,base,ins,mid,outs",
    [
        ("sd15", Family.V2, "sd15", SD15_IN, "R ST M R", SD15_OUT),
        ("sd15", Family.V3, "sd15", SD15_IN, "R ST R", SD15_OUT),
        ("sdxl", Family.SDXL_BETA, "sdxl", SDXL_IN, "R ST R", SDXL_OUT),
    ],
)
def test_module_order_at_every_site(request, unet_name, family, base, ins, mid, outs) -> None:
    unet = request.getfixturevalue(unet_name)
    spec, model = motion(family)
    before = snapshot(unet)
    handle = inject(unet, model, FrameLayout(), base)
    try:
        assert {i: " ".join(kinds(b)) for i, b in enumerate(unet.input_blocks)} == ins
        assert " ".join(kinds(unet.middle_block)) == mid
        assert {i: " ".join(kinds(b)) for i, b in enumerate(unet.output_blocks)} == outs
        for i, block in enumerate(unet.input_blocks):
            for m in block:
                if isinstance(m, MotionBlock):
                    level, j = divmod(i - 1, 3)
                    assert m.prefix == f"down_blocks.{level}.motion_modules.{j}"
                    assert m.motion is model.get_submodule(m.prefix)
        for i, block in enumerate(unet.output_blocks):
            for m in block:
                if isinstance(m, MotionBlock):
                    assert m.prefix == "up_blocks.{}.motion_modules.{}".format(*divmod(i, 3))
    finally:
        handle.remove()
    assert_same(unet, before)


def test_frames_influence_each_other_within_a_video_only(sd15) -> None:
    _, model = motion(Family.V3)
    layout = FrameLayout()
    x = unet_inputs(2 * FRAMES, size=8)[0]
    x2 = x.clone()
    x2[0] += 1.0  # change frame 0 of the first video (cond)
    handle = inject(sd15, model, layout, "sd15")
    try:
        y, y2 = run(sd15, layout=layout, x=x), run(sd15, layout=layout, x=x2)
    finally:
        handle.remove()
    assert (y[1:FRAMES] - y2[1:FRAMES]).abs().max() > 1e-4  # other frames of that video move
    assert torch.equal(y[FRAMES:], y2[FRAMES:])  # the other video does not
    plain, plain2 = run(sd15, x=x), run(sd15, x=x2)
    assert torch.equal(plain[1:], plain2[1:])  # without the module frames are independent


@pytest.mark.parametrize("family", [Family.V2, Family.V3])
def test_zero_proj_out_is_bit_identical_and_removal_restores(sd15, family) -> None:
    before = snapshot(sd15)
    plain = run(sd15)
    _, model = motion(family, zero_out=True)
    layout = FrameLayout()
    handle = inject(sd15, model, layout, "sd15")
    try:
        assert torch.equal(run(sd15, layout=layout), plain)
    finally:
        handle.remove()
    assert torch.equal(run(sd15), plain)
    assert_same(sd15, before)


def test_removal_after_real_motion_is_bit_identical(sdxl) -> None:
    before = snapshot(sdxl)
    plain = run(sdxl)
    _, model = motion(Family.HOTSHOT_XL)  # also applies and removes the across-frames GroupNorm
    layout = FrameLayout()
    handle = inject(sdxl, model, layout, "sdxl")
    assert len(handle.group_norms) > 0
    moved = run(sdxl, layout=layout)
    handle.remove()
    handle.remove()  # idempotent
    assert not torch.equal(moved, plain)
    assert torch.equal(run(sdxl), plain)
    assert_same(sdxl, before)


@pytest.mark.parametrize("fail_at", ["insert", "groupnorm"])
def test_failure_part_way_leaves_unet_untouched(sd15, monkeypatch, fail_at) -> None:
    before = snapshot(sd15)
    plain = run(sd15)
    calls = {"n": 0}
    if fail_at == "insert":
        real = injection_module._insert_module

        def flaky(*args):
            calls["n"] += 1
            if calls["n"] == 7:
                raise RuntimeError("boom at site 7")
            real(*args)

        monkeypatch.setattr(injection_module, "_insert_module", flaky)
    else:
        real = injection_module.across_frames_forward

        def flaky(*args):
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("boom at norm 5")
            return real(*args)

        monkeypatch.setattr(injection_module, "across_frames_forward", flaky)
    _, model = motion(Family.V1)
    with pytest.raises(RuntimeError, match="boom"):
        inject(sd15, model, FrameLayout(), "sd15")
    assert_same(sd15, before)
    assert torch.equal(run(sd15), plain)


def test_double_apply_refused(sd15) -> None:
    _, model = motion(Family.V3)
    handle = inject(sd15, model, FrameLayout(), "sd15")
    try:
        before = snapshot(sd15)
        with pytest.raises(InjectionError, match="already carries a motion module"):
            inject(sd15, motion(Family.V3, seed=1)[1], FrameLayout(), "sd15")
        assert_same(sd15, before)
    finally:
        handle.remove()


def test_base_mismatch_refused_naming_both(sd15, sdxl) -> None:
    before = snapshot(sd15)
    _, xl = motion(Family.SDXL_BETA)
    with pytest.raises(
        InjectionError,
        match="AnimateDiff SDXL beta is a SDXL motion module, but the loaded checkpoint is SD1.5",
    ):
        inject(sd15, xl, FrameLayout(), "sd15")
    assert_same(sd15, before)
    before_xl = snapshot(sdxl)
    _, v2 = motion(Family.V2)
    with pytest.raises(InjectionError, match="SD1.5 motion module, but the loaded checkpoint is SDXL"):
        inject(sdxl, v2, FrameLayout(), "sdxl")
    assert_same(sdxl, before_xl)


def test_width_mismatch_refused(sd15) -> None:
    from motion_module.model import MotionModule, SitePlan

    before = snapshot(sd15)
    wide = make_mm_state_dict(Family.V3, widths=(64, 128, 256, 256), device="meta")
    model = MotionModule(SitePlan.from_state_dict(wide), 32, device="meta")  # shapes only
    with pytest.raises(
        InjectionError, match=r"channel widths do not match.*input_blocks\[1\]: UNet 32, module 64"
    ):
        inject(sd15, model, FrameLayout(), "sd15")
    assert_same(sd15, before)


def test_loaded_module_object_is_accepted(sd15, tmp_path) -> None:
    from safetensors.torch import save_file

    from motion_module.loading import load_motion_module

    path = tmp_path / "mm_sd_v15.safetensors"
    save_file(make_mm_state_dict(Family.V1), str(path))
    loaded = load_motion_module(path)
    handle = inject(sd15, loaded, FrameLayout(), "sd15")
    try:
        assert len(handle.blocks) == 20 and len(handle.group_norms) > 0  # v1 brings the GroupNorm variant
    finally:
        handle.remove()
