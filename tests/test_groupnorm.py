"""The across-frames UNet GroupNorm (v1/HotShot) against a reshape-to-(B, C, F, H, W) reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from factories import make_mm_state_dict, make_sd15_unet, unet_inputs
from ldm.modules.diffusionmodules.util import GroupNorm32

from motion_module.detect import detect
from motion_module.frames import FrameLayout
from motion_module.groupnorm import across_frames_forward
from motion_module.injection import inject
from motion_module.loading import build_module
from motion_module.spec import Family

pytestmark = pytest.mark.usefixtures("single_thread")


def reference(x: torch.Tensor, norm: torch.nn.GroupNorm, videos: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    f = bf // videos
    v = x.view(videos, f, c, h, w).permute(0, 2, 1, 3, 4).contiguous()  # (b, c, f, h, w)
    y = F.group_norm(v.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)
    return y.permute(0, 2, 1, 3, 4).reshape(bf, c, h, w).to(x.dtype)


@pytest.mark.parametrize("videos", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factory_matches_reference(videos: int, dtype: torch.dtype) -> None:
    norm = GroupNorm32(32, 64)
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    torch.nn.init.normal_(norm.bias, 0.0, 0.1)
    layout = FrameLayout()
    forward = across_frames_forward(norm.forward, layout)
    x = (torch.randn(videos * 6, 64, 5, 3) * 3 + torch.arange(videos * 6).view(-1, 1, 1, 1)).to(dtype)
    with layout.using(6), torch.no_grad():
        y = forward(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert torch.allclose(
            y.float(), reference(x, norm, videos).float(), atol=1e-5 if dtype == torch.float32 else 2e-2
        )
        assert not torch.allclose(y.float(), norm(x).float(), atol=1e-2)  # differs from per-frame


def test_frame_count_must_be_set() -> None:
    forward = across_frames_forward(GroupNorm32(32, 32).forward, FrameLayout())
    with pytest.raises(RuntimeError, match="without a frame count"):
        forward(torch.randn(4, 32, 2, 2))


@pytest.mark.parametrize("videos", [1, 2])
def test_unet_norms_hacked_exactly_where_the_official_unet_did(videos: int) -> None:
    unet = make_sd15_unet()
    found = detect(make_mm_state_dict(Family.V1), "")
    model = build_module(found, "cpu", torch.float32)
    layout = FrameLayout()
    handle = inject(unet, model, layout, "sd15")
    resblocks = [m for m in unet.modules() if type(m).__name__ == "ResBlock"]
    expected = (
        {id(r.in_layers[0]) for r in resblocks} | {id(r.out_layers[0]) for r in resblocks} | {id(unet.out[0])}
    )
    assert {id(n) for n in handle.group_norms} == expected
    untouched = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm) and id(m) not in expected]
    assert untouched and all("forward" not in vars(m) for m in untouched)  # ST and motion-module norms

    seen: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [n.register_forward_hook(lambda m, i, o: seen.append((m, i[0], o))) for n in handle.group_norms]
    try:
        frames = 3
        x, t, c = unet_inputs(videos * frames, size=8)
        with torch.no_grad(), layout.using(frames):
            unet(x, t, c)
    finally:
        for hook in hooks:
            hook.remove()
        handle.remove()
    assert len(seen) == len(expected)
    for norm, inp, out in seen:
        assert torch.allclose(out, reference(inp, norm, videos), atol=1e-5)
    assert all("forward" not in vars(n) for n in handle.group_norms)
