"""img2vid weights and blend: the predecessor's tables (docs/behaviour.md), the fixed last-frame
case (noise in the middle, pinned ends, no jump after frame 0), inpaint masks, and reproducibility
from seeds."""

from __future__ import annotations

import pytest
import torch

from motion_module.latents import blend_latents, blend_weights, decay_curve
from motion_module.params import Img2VidParams


def _round(values, places=3):
    return [round(v, places) for v in values]


def test_defaults_without_last_frame_keep_53_percent_at_the_end():
    w = blend_weights(16, Img2VidParams(), has_last=False)
    assert _round(w.first[:3]) == [1.0, 0.969, 0.938]
    assert w.first[-2:] == (0.5625, 0.53125)
    assert w.last == (0.0,) * 16
    assert all(abs(a + n - 1) < 1e-12 for a, n in zip(w.first, w.noise, strict=True))


def test_power_2_scale_32_table():
    w = blend_weights(16, Img2VidParams(latent_power=2, latent_scale=32), has_last=False)
    assert _round(w.first[:6]) == [1.0, 0.969, 0.875, 0.719, 0.5, 0.219]
    assert w.first[6:] == (0.0,) * 10


def test_scale_8_both_ends_matches_the_spec_where_curves_do_not_overlap():
    p = Img2VidParams(latent_scale=8, latent_scale_last=8)
    w = blend_weights(16, p, has_last=True)
    assert _round(w.first[:9]) == [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    assert list(w.last) == list(reversed(w.first))
    assert _round(w.noise[7:9]) == [0.875, 0.875]
    assert w.noise[0] == 0.0 and w.noise[-1] == 0.0


def test_defaults_with_last_frame_keep_noise_and_pin_both_ends():
    # the predecessor normalised a+b to 1 here: zero noise on every frame, and a jump 0 -> 1
    w = blend_weights(16, Img2VidParams(), has_last=True)
    assert (w.first[0], w.last[0], w.noise[0]) == (1.0, 0.0, 0.0)
    assert (w.first[-1], w.last[-1], w.noise[-1]) == (0.0, 1.0, 0.0)
    assert all(n > 0.02 for n in w.noise[1:-1])
    assert max(w.noise) > 0.2
    # no jump: consecutive frames change the first-image share by less than 0.1
    assert max(abs(a - b) for a, b in zip(w.first, w.first[1:], strict=False)) < 0.1
    assert all(
        abs(a + b + n - 1) < 1e-12 and min(a, b, n) >= 0
        for a, b, n in zip(w.first, w.last, w.noise, strict=True)
    )


def test_one_frame_video_with_last_frame_is_the_first_image():
    w = blend_weights(1, Img2VidParams(), has_last=True)
    assert (w.first, w.last, w.noise) == ((1.0,), (0.0,), (0.0,))


def test_bad_curve_parameters_are_refused():
    with pytest.raises(ValueError, match="scale"):
        decay_curve(4, 1.0, 0.0)


def _noise(seeds, shape=(4, 6, 6)):
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def test_blend_matches_the_weights_and_same_seeds_give_same_latents():
    e0, e1 = torch.randn(1, 4, 6, 6), torch.randn(4, 6, 6)
    w = blend_weights(8, Img2VidParams(latent_scale=4, latent_scale_last=4), has_last=True)
    z = blend_latents(e0, _noise(range(100, 108)), w, last=e1)
    assert z.shape == (8, 4, 6, 6)
    torch.testing.assert_close(z[0], e0[0])
    torch.testing.assert_close(z[-1], e1)
    expected = w.first[3] * e0[0] + w.last[3] * e1 + w.noise[3] * _noise([103])[0]
    torch.testing.assert_close(z[3], expected)
    assert torch.equal(z, blend_latents(e0, _noise(range(100, 108)), w, last=e1))
    assert not torch.equal(z, blend_latents(e0, _noise(range(200, 208)), w, last=e1))


def test_inpaint_mask_keeps_the_original_in_the_kept_area():
    e0 = torch.randn(4, 6, 6)
    keep = torch.zeros(4, 6, 6)
    keep[:, :3] = 1.0  # WebUI p.mask: 1 = keep (top half)
    w = blend_weights(5, Img2VidParams(latent_scale=2), has_last=False)
    z = blend_latents(e0, _noise(range(5)), w, keep_mask=keep)
    assert torch.equal(z[:, :, :3], e0[:, :3].expand(5, 4, 3, 6))
    assert not torch.allclose(z[4, :, 3:], e0[:, 3:])
    # one mask per frame
    per_frame = torch.zeros(5, 4, 6, 6)
    per_frame[2] = 1.0
    z = blend_latents(e0, _noise(range(5)), w, keep_mask=per_frame)
    assert torch.equal(z[2], e0) and not torch.allclose(z[3], e0)


def test_last_frame_weights_without_a_latent_are_refused():
    w = blend_weights(3, Img2VidParams(), has_last=True)
    with pytest.raises(ValueError, match="last-frame latent"):
        blend_latents(torch.randn(4, 2, 2), _noise(range(3), (4, 2, 2)), w)
