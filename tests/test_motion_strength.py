"""Motion scale and motion mask on the real ldm UNet: scale 0 is the UNet without the module,
scale 1 is today's output bit for bit, masks act only where they are white, windows included."""

from __future__ import annotations

import pytest
import torch
from factories import make_mm_state_dict, make_sd15_unet, unet_inputs

from motion_module.detect import detect
from motion_module.frames import FrameLayout
from motion_module.injection import MotionBlock, inject
from motion_module.layers import TemporalTransformer3DModel
from motion_module.loading import build_module
from motion_module.motion_strength import MotionStrength, resize_mask
from motion_module.params import WindowMode, WindowParams
from motion_module.spec import Family
from motion_module.windows import WindowedDenoiser

pytestmark = pytest.mark.usefixtures("single_thread")

FRAMES = 4
SIZE = 8  # latent side: the first motion layer works at 8×8


LONG = 10  # frames of the windowed tests: more than the context of 6


@pytest.fixture(scope="module")
def plain():
    """The UNet, and its outputs without any motion module for FRAMES and for LONG frames."""
    unet = make_sd15_unet()
    with torch.no_grad():
        return (
            unet,
            unet(*unet_inputs(2 * FRAMES, size=SIZE)),
            unet(*unet_inputs(2 * LONG, size=SIZE, seed=4)),
        )


@pytest.fixture(scope="module")
def injected(plain):
    unet = plain[0]
    model = build_module(detect(make_mm_state_dict(Family.V2), ""), "cpu", torch.float32)  # has a mid block
    layout = FrameLayout()
    handle = inject(unet, model, layout, "sd15")
    yield unet, layout
    handle.remove()


def run(unet, layout, strength: MotionStrength | None = None, frames: int = FRAMES) -> torch.Tensor:
    with torch.no_grad(), layout.using(frames):
        if strength is None:
            return unet(*unet_inputs(2 * frames, size=SIZE))
        with layout.applying(strength):
            return unet(*unet_inputs(2 * frames, size=SIZE))


def first_layer(unet, layout, strength: MotionStrength) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of the first motion layer (input_blocks[1], 8×8) under ``strength``."""
    block = next(m for m in unet.input_blocks[1] if isinstance(m, MotionBlock))
    seen = {}
    hook = block.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    try:
        run(unet, layout, strength)
    finally:
        hook.remove()
    return seen["x"], seen["y"]


def half_white(height: int = 64, width: int = 64) -> torch.Tensor:
    mask = torch.zeros(height, width)
    mask[:, : width // 2] = 1.0  # left half white
    return mask


# --- today's path and the extremes ---------------------------------------------------------------


def legacy_forward(self, x, frames, scale=None, windows=None):
    """TemporalTransformer3DModel.forward as it was before motion strength existed (verbatim; the
    ``windows`` argument came later and is None without context windows)."""
    assert windows is None
    bf, c, height, width = x.shape
    b = bf // frames
    h = self.group_norm(x, frames).view(b, frames, c, height * width)
    h = h.permute(0, 3, 1, 2).reshape(b * height * width, frames, c)
    h = self.proj_in(h)
    for block in self.transformer_blocks:
        h = block(h)
    h = self.proj_out(h)
    h = h.view(b, height * width, frames, c).permute(0, 2, 3, 1)
    return (x.view(b, frames, c, height * width) + h).view(bf, c, height, width)


def test_scale_one_is_todays_output_bit_for_bit(injected, monkeypatch) -> None:
    unet, layout = injected
    default = run(unet, layout)
    explicit = run(unet, layout, MotionStrength(scale=1.0))
    with monkeypatch.context() as patch:
        patch.setattr(TemporalTransformer3DModel, "forward", legacy_forward)
        before = run(unet, layout)
    assert torch.equal(default, before) and torch.equal(explicit, before)


def test_scale_zero_is_the_unet_without_the_module(plain, injected) -> None:
    without = plain[1]
    unet, layout = injected
    assert torch.equal(run(unet, layout, MotionStrength(scale=0.0)), without)
    assert (run(unet, layout) - without).abs().max() > 1e-3  # the module is live at scale 1


def test_black_mask_with_min_zero_is_scale_zero(plain, injected) -> None:
    without = plain[1]
    unet, layout = injected
    black = MotionStrength(scale=1.5, mask=torch.zeros(64, 64), mask_min=0.0)
    assert torch.equal(run(unet, layout, black), without)


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.75])
def test_white_mask_is_the_scale_alone(injected, scale) -> None:
    unet, layout = injected
    white = run(unet, layout, MotionStrength(scale=scale, mask=torch.ones(64, 64), mask_min=0.3))
    assert torch.equal(white, run(unet, layout, MotionStrength(scale=scale)))


def test_scale_multiplies_the_layer_residual(injected) -> None:
    unet, layout = injected
    x, y1 = first_layer(unet, layout, MotionStrength())
    for scale in (0.5, 2.0):
        x_s, y_s = first_layer(unet, layout, MotionStrength(scale=scale))
        assert torch.equal(x_s, x)  # nothing before the first motion layer changed
        torch.testing.assert_close(y_s - x, scale * (y1 - x), rtol=1e-5, atol=1e-6)
    assert (y1 - x).abs().max() > 1e-2


def test_half_white_mask_acts_only_on_the_white_half(injected) -> None:
    unet, layout = injected
    x, full = first_layer(unet, layout, MotionStrength())
    _, masked = first_layer(unet, layout, MotionStrength(mask=half_white()))
    left, right = slice(0, SIZE // 2), slice(SIZE // 2, SIZE)
    assert torch.equal(masked[..., left], full[..., left])  # white: full motion
    assert torch.equal(masked[..., right], x[..., right])  # black, min 0: no motion
    _, floor = first_layer(unet, layout, MotionStrength(mask=half_white(), mask_min=0.25))
    torch.testing.assert_close(floor[..., right] - x[..., right], 0.25 * (full - x)[..., right])
    assert torch.equal(floor[..., left], full[..., left])


def test_applying_restores_the_previous_strength_exactly(injected) -> None:
    unet, layout = injected
    before = layout.strength
    reference = run(unet, layout)
    with pytest.raises(RuntimeError, match="boom"), layout.applying(MotionStrength(scale=0.0)):
        raise RuntimeError("boom")
    assert layout.strength is before
    assert torch.equal(run(unet, layout), reference)


# --- windows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(WindowMode))
def test_scale_zero_with_windows_is_the_plain_unet(plain, injected, mode) -> None:
    unet, layout = injected
    expected, frames = plain[2], LONG
    x, t, context = unet_inputs(2 * frames, size=SIZE, seed=4)

    def inner(x, sigma, cond):
        return unet(x, timesteps=sigma, context=cond)

    params = WindowParams(context=6, overlap=2, mode=mode)
    with torch.no_grad():
        with layout.applying(MotionStrength(scale=0.0)):
            out = WindowedDenoiser(inner, params, layout, frames, step=lambda: 1)(x, t, cond=context)
        live = WindowedDenoiser(inner, params, layout, frames, step=lambda: 1)(x, t, cond=context)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (live - expected).abs().max() > 1e-3


# --- the strength object ---------------------------------------------------------------------------


def test_scale_map_formula_and_resizing() -> None:
    mask = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    strength = MotionStrength(scale=1.5, mask=mask, mask_min=0.2)
    expected = 1.5 * (0.2 + 0.8 * mask)
    torch.testing.assert_close(strength.scale_at(2, 2, torch.device("cpu"), torch.float32), expected)
    assert strength.scale_at(2, 2, torch.device("cpu"), torch.float16).dtype == torch.float16
    assert MotionStrength(scale=0.5).scale_at(4, 4, torch.device("cpu"), torch.float32) == 0.5
    # shrinking averages each cell's footprint; a boundary on a cell edge stays sharp
    assert torch.equal(resize_mask(half_white(64, 64), 8, 8), half_white(8, 8))
    assert torch.equal(resize_mask(torch.eye(4), 2, 2), torch.full((2, 2), 0.0).fill_diagonal_(0.5))
    small = resize_mask(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), 1, 1)
    torch.testing.assert_close(small, torch.tensor([[1 / 3]]))  # the mean, not the centre sample
    # growing interpolates bilinearly with half-pixel centres
    grown = resize_mask(torch.tensor([[0.0, 1.0]]), 1, 4)
    torch.testing.assert_close(grown, torch.tensor([[0.0, 0.25, 0.75, 1.0]]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scale": 2.5}, r"^motion_scale is 2.5; allowed: a number 0..2"),
        ({"scale": -0.1}, r"^motion_scale is -0.1; allowed"),
        ({"scale": float("nan")}, r"^motion_scale is nan; allowed"),
        ({"mask_min": 1.5}, r"^motion_mask_min is 1.5; allowed: a number 0..1"),
        ({"mask": torch.zeros(1, 8, 8)}, r"^motion_mask is \(1, 8, 8\); allowed: a \(height, width\) float"),
        ({"mask": torch.full((4, 4), 255.0)}, r"^motion_mask has values 255..255; allowed: 0..1"),
        ({"mask": torch.zeros(4, 4, dtype=torch.uint8)}, r"^motion_mask is \(4, 4\); allowed"),
    ],
)
def test_errors_name_the_field_and_value(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        MotionStrength(**kwargs)
