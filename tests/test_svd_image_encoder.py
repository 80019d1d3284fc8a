"""SVD's image embedder against transformers' CLIPVisionModelWithProjection and diffusers' SVD
pipeline (the same weights, mapped key by key), plus config inference from shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from svd_peers import transformers_image_encoder

from motion_module.svd import image_encoder as ie

transformers = pytest.importorskip("transformers")
svd_pipeline = pytest.importorskip(
    "diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion"
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Two heads of ViT-H's width 80, the real patch and input size (diffusers' pipeline resizes to 224).
TINY = ie.ImageEncoderConfig(
    width=160, layers=2, heads=2, mlp_width=640, patch_size=14, image_size=224, output_dim=48
)


def randomized(config: ie.ImageEncoderConfig, seed: int = 0) -> ie.ImageEncoder:
    torch.manual_seed(seed)
    model = ie.ImageEncoder(config)
    with torch.no_grad():
        for p in model.parameters():  # LayerNorms away from 1/0 so a swapped norm would show
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 1 else 0.05) + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def test_tower_matches_transformers_clip_vision_model():
    ours = randomized(TINY)
    peer = transformers_image_encoder(ours)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = peer(pixel_values=pixels).image_embeds
        got = ours(pixels)
    assert got.shape == (2, 48)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_whole_embedding_matches_diffusers_encode_image():
    """PIL image → diffusers' ``_encode_image`` (its antialiased resize, CLIPImageProcessor, the
    vision model) against ``embed_image`` on the same picture in [-1, 1]."""
    ours = randomized(TINY, seed=1)
    peer = transformers_image_encoder(ours)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8))
    stub = type("Pipe", (), {})()
    stub.image_encoder = peer
    stub.feature_extractor = transformers.CLIPImageProcessor()
    stub.video_processor = svd_pipeline.VideoProcessor(do_resize=True, vae_scale_factor=8)
    with torch.no_grad():
        expected = svd_pipeline.StableVideoDiffusionPipeline._encode_image(stub, picture, "cpu", 1, False)[
            :, 0
        ]
        image = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        got = ie.embed_image(ours, image * 2.0 - 1.0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(576, 1024), (300, 420), (150, 100), (224, 224)])
def test_preprocess_resize_matches_diffusers(size):
    torch.manual_seed(2)
    image = torch.rand(1, 3, *size) * 2 - 1
    expected = svd_pipeline._resize_with_antialiasing(image, (224, 224))
    got = ie.resize_antialiased(image, (224, 224))
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def test_preprocess_normalises_with_clip_mean_and_std():
    gray = torch.zeros(1, 3, 224, 224)  # [-1, 1] zero is 0.5 gray
    got = ie.preprocess(gray, 224)[0, :, 0, 0]
    expected = (0.5 - torch.tensor(ie.CLIP_MEAN)) / torch.tensor(ie.CLIP_STD)
    torch.testing.assert_close(got, expected)


def test_config_read_from_shapes():
    small = ie.ImageEncoderConfig(
        width=240, layers=3, heads=3, mlp_width=960, patch_size=7, image_size=28, output_dim=32
    )
    assert ie.config_from_state_dict(ie.ImageEncoder(small).state_dict()) == small
    vit_h = ie.ImageEncoderConfig(
        width=1280, layers=32, heads=16, mlp_width=5120, patch_size=14, image_size=224, output_dim=1024
    )
    with torch.device("meta"):
        assert ie.config_from_state_dict(ie.ImageEncoder(vit_h).state_dict()) == vit_h


def test_loads_strictly_under_the_official_prefix():
    ours = randomized(TINY)
    checkpoint = {ie.PREFIX + k: v for k, v in ours.state_dict().items()}
    checkpoint |= {key: torch.zeros(1) for key in ie.IGNORED_KEYS}
    stripped = {k[len(ie.PREFIX) :]: v for k, v in checkpoint.items() if k.startswith(ie.PREFIX)}
    loaded = ie.ImageEncoder(ie.config_from_state_dict(stripped))
    loaded.load_state_dict(stripped, strict=True)
    assert not any(k.startswith(ie.PREFIX) for k in ie.IGNORED_KEYS)
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), ours(pixels), rtol=0, atol=0)


def test_refusals_name_the_field():
    sd = ie.ImageEncoder(ie.ImageEncoderConfig(100, 1, 1, 400, 14, 28, 16)).state_dict()
    with pytest.raises(ValueError, match=r"width 100 is not a multiple of the head width 80"):
        ie.config_from_state_dict(sd)
    sd = dict(randomized(TINY).state_dict())
    del sd["proj"]
    with pytest.raises(ValueError, match=r"'proj' is missing"):
        ie.config_from_state_dict(sd)
    with pytest.raises(ValueError, match=r"expected \(b, 3, 224, 224\)"):
        randomized(TINY)(torch.zeros(1, 3, 112, 112))
