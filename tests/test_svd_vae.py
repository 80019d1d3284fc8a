"""SVD's conditioning encoder and temporal decoder against diffusers' AutoencoderKLTemporalDecoder
and the SVD pipeline's own encode/decode helpers (the same weights, mapped key by key)."""

from __future__ import annotations

import pytest
import torch
from svd_peers import diffusers_vae, vae_resnet_key

from motion_module.svd import vae, vae_blocks

svd_pipeline = pytest.importorskip(
    "diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion"
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Two levels (latents at half size), two ResnetBlocks per level: the reference decoder's mid block
# always has two, and diffusers' temporal decoder has layers_per_block of them.
ENCODER = vae.VaeEncoderConfig(in_channels=3, channels=(32, 64), res_blocks=2, z_channels=4, embed_dim=4)
DECODER = vae.TemporalDecoderConfig(
    z_channels=4, channels=(32, 64), res_blocks=2, out_channels=3, time_kernel=(3, 1, 1)
)


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random (norm scales around 1, mix factors away from 0) so nothing hides."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("mix_factor"):
                p.copy_(torch.randn_like(p) * 2)
            elif p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name or "in_layers.0" in name else 0.0))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in**0.5)
    return module.eval()


@pytest.fixture(scope="module")
def models():
    encoder = randomized(vae.VaeEncoder(ENCODER), seed=0)
    decoder = randomized(vae.TemporalDecoder(DECODER), seed=1)
    stub = type("Pipe", (), {})()  # what the pipeline's encode/decode helpers read from self
    stub.vae = diffusers_vae(encoder, decoder)
    return encoder, decoder, stub


def test_encode_is_the_mean_diffusers_pipeline_feeds_the_unet(models):
    encoder, _, pipe = models
    torch.manual_seed(3)
    image = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = svd_pipeline.StableVideoDiffusionPipeline._encode_vae_image(pipe, image, "cpu", 1, False)
        got = encoder.encode(image)
    assert got.shape == (3, 4, 8, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("videos, frames", [(1, 3), (2, 2)])
def test_decode_matches_diffusers(models, videos, frames):
    _, decoder, pipe = models
    torch.manual_seed(4)
    z = torch.randn(videos * frames, 4, 8, 8)
    with torch.no_grad():
        expected = pipe.vae.decode(z, num_frames=frames).sample
        got = decoder(z, frames)
    assert got.shape == (videos * frames, 3, 16, 16)
    assert expected.abs().mean() > 0.05
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_decode_matches_diffusers_decode_latents(models, chunk):
    """diffusers' pipeline decodes ``decode_chunk_size`` frames per call, after dividing by the
    latent scale; ours does the same given the scale is applied by the caller."""
    _, decoder, pipe = models
    assert pipe.vae.config.scaling_factor == vae.LATENT_SCALE
    torch.manual_seed(5)
    latents = torch.randn(1, 3, 4, 8, 8)  # (b, f, c, h, w) as the sampler leaves them, scaled
    with torch.no_grad():
        expected = svd_pipeline.StableVideoDiffusionPipeline.decode_latents(pipe, latents, 3, chunk)
        got = decoder.decode(latents[0] / vae.LATENT_SCALE, 3, chunk_size=chunk)
        whole = decoder.decode(latents[0] / vae.LATENT_SCALE, 3)
    torch.testing.assert_close(got, expected[0].transpose(0, 1), rtol=1e-4, atol=1e-5)
    assert (got - whole).abs().max() > 1e-3, "chunking is expected to change the temporal layers' input"


def test_chunk_covering_all_frames_is_the_unchunked_decode(models):
    _, decoder, _ = models
    torch.manual_seed(6)
    z = torch.randn(2 * 3, 4, 8, 8)
    with torch.no_grad():
        whole = decoder(z, 3)
        assert torch.equal(decoder.decode(z, 3), whole)
        assert torch.equal(decoder.decode(z, 3, chunk_size=3), whole)
        assert torch.equal(decoder.decode(z, 3, chunk_size=8), whole)
        # chunks stay inside their video: chunk 2 of 3 frames = per-video decode of [2, 1]
        per_video = torch.cat(
            [decoder(z[0:2], 2), decoder(z[2:3], 1), decoder(z[3:5], 2), decoder(z[5:6], 1)]
        )
        assert torch.equal(decoder.decode(z, 3, chunk_size=2), per_video)


def test_configs_read_from_shapes():
    assert vae.encoder_config_from_state_dict(vae.VaeEncoder(ENCODER).state_dict()) == ENCODER
    assert vae.decoder_config_from_state_dict(vae.TemporalDecoder(DECODER).state_dict()) == DECODER
    widths = (128, 256, 512, 512)  # SVD's
    real_encoder = vae.VaeEncoderConfig(
        in_channels=3, channels=widths, res_blocks=2, z_channels=4, embed_dim=4
    )
    real_decoder = vae.TemporalDecoderConfig(
        z_channels=4, channels=widths, res_blocks=2, out_channels=3, time_kernel=(3, 1, 1)
    )
    with torch.device("meta"):
        encoder_sd = vae.VaeEncoder(real_encoder).state_dict()
        decoder_sd = vae.TemporalDecoder(real_decoder).state_dict()
    assert vae.encoder_config_from_state_dict(encoder_sd) == real_encoder
    assert vae.decoder_config_from_state_dict(decoder_sd) == real_decoder
    # the official files hold 106 first-stage encoder tensors: the same Encoder without quant_conv
    assert sum(k.startswith("encoder.") for k in encoder_sd) == 106


def test_loads_strictly_under_the_official_prefixes(models):
    encoder, decoder, _ = models
    checkpoint = {vae.ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items()}
    checkpoint |= {vae.DECODER_PREFIX + k: v for k, v in decoder.state_dict().items()}
    checkpoint |= {prefix + "conv_in.weight": torch.zeros(1) for prefix in vae.IGNORED_PREFIXES}

    def strip(prefix: str) -> dict:
        ignored = tuple(vae.IGNORED_PREFIXES)
        return {
            k[len(prefix) :]: v
            for k, v in checkpoint.items()
            if k.startswith(prefix) and not k.startswith(ignored)
        }

    enc_sd, dec_sd = strip(vae.ENCODER_PREFIX), strip(vae.DECODER_PREFIX)
    vae.VaeEncoder(vae.encoder_config_from_state_dict(enc_sd)).load_state_dict(enc_sd, strict=True)
    vae.TemporalDecoder(vae.decoder_config_from_state_dict(dec_sd)).load_state_dict(dec_sd, strict=True)


def test_refusals_name_the_value(models):
    _, decoder, _ = models
    z = torch.zeros(5, 4, 8, 8)
    with pytest.raises(ValueError, match=r"shape \(5, 4, 8, 8\) do not hold whole videos of num_frames=2"):
        decoder(z, 2)
    with pytest.raises(ValueError, match=r"chunk_size = -1 is not allowed"):
        decoder.decode(z, 5, chunk_size=-1)
    sd = dict(vae.TemporalDecoder(DECODER).state_dict())
    sd["up.1.attn.0.q.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"attention inside the resolution levels \('up.1.attn.0.q.weight'"):
        vae.decoder_config_from_state_dict(sd)
    sd = dict(vae.VaeEncoder(ENCODER).state_dict())
    del sd["quant_conv.weight"]
    with pytest.raises(ValueError, match=r"'quant_conv.weight' is missing"):
        vae.encoder_config_from_state_dict(sd)


def test_norm_epsilons_match_on_small_activations():
    """At activation variance near 1e-6 the GroupNorm eps decides the output: 1e-6 in the spatial
    ResnetBlock, 1e-5 in the temporal one (the reference's GroupNorm32 default)."""
    from diffusers.models.resnet import SpatioTemporalResBlock

    ours = randomized(vae_blocks.VideoResBlock(32, 32, (3, 1, 1)), seed=7)
    with torch.no_grad():
        ours.conv2.weight.mul_(1e-3)
        ours.conv2.bias.zero_()
    peer = SpatioTemporalResBlock(
        32,
        32,
        temb_channels=None,
        eps=1e-6,
        temporal_eps=1e-5,
        merge_factor=0.0,
        merge_strategy="learned",
        switch_spatial_to_temporal_mix=True,
    ).eval()
    peer.load_state_dict({vae_resnet_key(k, True): v for k, v in ours.state_dict().items()}, strict=True)
    torch.manual_seed(8)
    x = torch.randn(3, 32, 4, 4) * 1e-3
    with torch.no_grad():
        expected = peer(x, image_only_indicator=torch.zeros(1, 3))
        got = ours(x, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_half_precision_weights_run():
    """Weights cast to bfloat16 (how a pipeline saves memory): the temporal GroupNorms still
    compute in float32, and the result stays near the float32 decode."""
    decoder = randomized(vae.TemporalDecoder(DECODER), seed=9)
    torch.manual_seed(10)
    z = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        full = decoder(z, 3)
        half = decoder.to(torch.bfloat16)(z.to(torch.bfloat16), 3)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()
