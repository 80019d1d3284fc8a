"""img2vid host seam against a fake img2img ``p`` and fake WebUI modules (rng, images, VAE):
every batch blends from the original init latent with noise from its own seeds, the inpaint
mask keeps its area, the last image is encoded like the init image, and closing restores p."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
from PIL import Image

from motion_module.latents import blend_weights
from motion_module.params import Img2VidParams
from scripts.animatediff_webui import img2vid
from scripts.animatediff_webui.patch_session import PatchSession

C, H, W = 4, 4, 4


def seed_noise(p, shape):
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in p.seeds])


def make_p(frames=6, seeds=None, **extra):
    e0 = torch.randn(1, C, H, W, generator=torch.Generator().manual_seed(7))
    fields = dict(
        init_images=[Image.new("RGB", (32, 32))],
        init_latent=e0.repeat(frames, 1, 1, 1),
        seeds=list(seeds or range(100, 100 + frames)),
        mask=None,
        resize_mode=0,
        width=32,
        height=32,
    )
    fields.update(extra)
    return SimpleNamespace(**fields)


def test_each_batch_blends_from_the_original_latent_with_its_own_seeds():
    p = make_p()
    original = p.init_latent
    session = PatchSession()
    params = Img2VidParams(latent_scale=4)
    start = img2vid.blend_init_latent(p, session, params, noise_fn=seed_noise)
    assert start is not None and start.first is original
    batch0 = p.init_latent
    w = blend_weights(6, params, has_last=False)
    torch.testing.assert_close(batch0[0], original[0])
    torch.testing.assert_close(batch0[3], w.first[3] * original[0] + w.noise[3] * seed_noise(p, (C, H, W))[3])

    p.seeds = list(range(106, 112))  # next batch (video): new seeds, same original image
    img2vid.blend_init_latent(p, session, params, start, noise_fn=seed_noise)
    torch.testing.assert_close(p.init_latent[0], original[0])
    assert not torch.allclose(p.init_latent[3], batch0[3])

    p.seeds = list(range(100, 106))  # same seeds -> same latents
    img2vid.blend_init_latent(p, session, params, start, noise_fn=seed_noise)
    assert torch.equal(p.init_latent, batch0)
    session.close()
    assert p.init_latent is original


def test_last_frame_is_encoded_once_and_pins_the_final_frame():
    p = make_p()
    e1 = torch.randn(1, C, H, W)
    calls = []

    def encode(p_, image):
        calls.append(image)
        return e1

    session, start = PatchSession(), None
    for _ in range(2):
        start = img2vid.blend_init_latent(
            p, session, Img2VidParams(), start, last_image="last.png", noise_fn=seed_noise, encode_fn=encode
        )
    assert calls == ["last.png"]
    torch.testing.assert_close(p.init_latent[-1], e1[0])
    noise_share = blend_weights(6, Img2VidParams(), has_last=True).noise
    assert all(n > 0 for n in noise_share[1:-1])


def test_inpaint_mask_area_keeps_the_init_latent():
    keep = torch.zeros(C, H, W)
    keep[:, :, :2] = 1.0
    p = make_p(mask=keep)
    original = p.init_latent
    img2vid.blend_init_latent(p, PatchSession(), Img2VidParams(latent_scale=2), noise_fn=seed_noise)
    assert torch.equal(p.init_latent[:, :, :, :2], original[:, :, :, :2])
    with pytest.raises(RuntimeError, match="one mask or one per frame"):
        img2vid.blend_init_latent(
            make_p(mask=torch.ones(3, C, H, W)), PatchSession(), Img2VidParams(), noise_fn=seed_noise
        )


def test_several_init_images_are_video_input_and_are_left_alone():
    p = make_p(init_images=[Image.new("RGB", (8, 8))] * 2)
    before = p.init_latent
    assert not img2vid.blend_init_latent(p, PatchSession(), Img2VidParams(), noise_fn=seed_noise)
    assert p.init_latent is before


@pytest.fixture
def fake_webui(monkeypatch):
    """Just enough of modules.{rng,images,shared,devices,sd_samplers_common} for the defaults."""
    modules = ModuleType("modules")
    rng = ModuleType("modules.rng")

    class ImageRNG:
        def __init__(
            self,
            shape,
            seeds,
            subseeds=None,
            subseed_strength=0.0,
            seed_resize_from_h=0,
            seed_resize_from_w=0,
        ):
            self.shape, self.gens = shape, [torch.Generator().manual_seed(s) for s in seeds]

        def next(self):
            return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])

    rng.ImageRNG = ImageRNG
    images = ModuleType("modules.images")
    images.flatten = lambda img, color: img
    images.resize_image = lambda mode, img, w, h: img.resize((w, h))
    shared = ModuleType("modules.shared")
    shared.opts = SimpleNamespace(img2img_background_color="#ffffff", sd_vae_encode_method="Full")
    shared.device = torch.device("cpu")
    devices = ModuleType("modules.devices")
    devices.dtype_vae = torch.float32
    common = ModuleType("modules.sd_samplers_common")
    common.approximation_indexes = {"Full": 0}
    # fake VAE: 8x average pool, 3 -> 4 channels
    common.images_tensor_to_samples = lambda x, approx, model: torch.nn.functional.avg_pool2d(
        torch.cat([x, x[:, :1]], 1), 8
    )
    for name, module in dict(
        rng=rng, images=images, shared=shared, devices=devices, sd_samplers_common=common
    ).items():
        setattr(modules, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", modules)


def test_seeded_noise_is_the_second_draw_of_the_batch_rng(fake_webui):
    p = SimpleNamespace(
        seeds=[5, 6], subseeds=[0, 0], subseed_strength=0, seed_resize_from_h=0, seed_resize_from_w=0
    )
    noise = img2vid.seeded_noise(p, (C, H, W))
    gen = torch.Generator().manual_seed(6)
    sampling = torch.randn((C, H, W), generator=gen)
    assert torch.equal(noise[1], torch.randn((C, H, W), generator=gen))
    assert not torch.equal(noise[1], sampling)


@pytest.mark.parametrize("resize_mode", [0, 3])
def test_last_image_encoding_follows_the_resize_mode(fake_webui, resize_mode):
    p = make_p(resize_mode=resize_mode, sd_model=None)
    latent = img2vid.encode_image(p, Image.new("RGB", (64, 48), (255, 0, 0)))
    assert latent.shape == (1, 4, 4, 4)
    torch.testing.assert_close(latent[0, 0], torch.ones(4, 4))
