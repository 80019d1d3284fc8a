"""The SVD UNet against diffusers' ``UNetSpatioTemporalConditionModel`` with the same random weights,
plus config recovery, strict loading, feed-forward chunking and the image-only merge."""

from __future__ import annotations

import copy

import pytest
import torch
from svd_peers import diffusers_unet

from motion_module.svd.unet import (
    SvdUNet,
    SvdUNetConfig,
    config_from_state_dict,
    time_ids_vector,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: one thread beats two contending

# Three levels like SVD's four in miniature: attention at all but the last, 2 res blocks per level.
TIME_ID_WIDTH = 8
TINY = SvdUNetConfig(
    model_channels=32,
    channel_mult=(1, 2, 2),
    attention_levels=(0, 1),
    head_dim=16,
    context_dim=24,
    adm_in_channels=3 * TIME_ID_WIDTH,
)
VIDEOS, FRAMES = 2, 3
ATOL = 1e-5  # float32; measured differences are about 5e-6 on outputs of std 0.5
ATOL_FLOAT64 = 1e-12  # float64; measured differences are about 7e-15


def _tiny_unet(seed: int = 0) -> SvdUNet:
    """Random weights everywhere: besides the default init, norms, biases and mix factors get
    noise so no parameter sits at a value that hides a wrong mapping (1 or 0)."""
    torch.manual_seed(seed)
    unet = SvdUNet(TINY).eval()
    with torch.no_grad():
        for param in unet.parameters():
            if param.ndim <= 1:
                param.add_(torch.randn_like(param) * 0.5)
    return unet


@pytest.fixture(scope="module")
def twins() -> tuple[SvdUNet, torch.nn.Module]:
    """Our tiny UNet and diffusers' loaded with the same weights (built once: diffusers' model
    takes seconds to build; tests work on copies)."""
    ours = _tiny_unet()
    return ours, diffusers_unet(ours)


def _inputs(height: int, width: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(VIDEOS, FRAMES, TINY.in_channels, height, width, generator=generator)
    c_noise = torch.tensor([0.3, -0.7])  # 0.25 * ln(sigma) per video
    image_embeds = torch.randn(VIDEOS, 1, TINY.context_dim, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02], [3.0, 40.0, 0.1]])  # fps_id, motion bucket, cond aug
    return latents, c_noise, image_embeds, time_ids


def _ours_forward(unet: SvdUNet, latents, c_noise, image_embeds, time_ids, indicator=None):
    y = torch.cat([time_ids_vector(*ids.tolist(), 1, width=TIME_ID_WIDTH) for ids in time_ids])
    per_frame = {"repeats": FRAMES, "dim": 0}
    out = unet(
        latents.flatten(0, 1),
        c_noise.repeat_interleave(**per_frame),
        image_embeds.repeat_interleave(**per_frame),
        y.repeat_interleave(**per_frame),
        num_frames=FRAMES,
        image_only_indicator=indicator,
    )
    return out.unflatten(0, (VIDEOS, FRAMES))


def _with_indicator(model: torch.nn.Module, indicator: torch.Tensor):
    """diffusers' top-level forward always passes zeros; swap in ``indicator`` at every block."""
    blocks = [*model.down_blocks, model.mid_block, *model.up_blocks]

    def swap(module, args, kwargs):
        return args, {**kwargs, "image_only_indicator": indicator}

    return [block.register_forward_pre_hook(swap, with_kwargs=True) for block in blocks]


@pytest.mark.parametrize(
    "dtype, atol", [(torch.float64, ATOL_FLOAT64), (torch.float32, ATOL)], ids=["f64", "f32"]
)
@pytest.mark.parametrize(
    "height, width, indicator",
    [
        (8, 8, None),
        (7, 9, None),  # odd sizes: upsampling to the skip connection's size, as diffusers does
        (8, 8, torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])),
    ],
    ids=["8x8", "7x9", "image-only-rows"],
)
def test_matches_diffusers(twins, height, width, indicator, dtype, atol):
    """Same weights, same inputs. In float64 every difference in operation order or constant
    shows (diffusers' own 1e-6 GroupNorm eps in its down blocks moves the output by 3e-5)."""
    ours, theirs = (copy.deepcopy(model).to(dtype) for model in twins)
    latents, c_noise, image_embeds, time_ids = (t.to(dtype) for t in _inputs(height, width))
    hooks = _with_indicator(theirs, indicator.to(dtype)) if indicator is not None else []
    with torch.no_grad():
        expected = theirs(latents, c_noise, image_embeds, time_ids).sample
        got = _ours_forward(ours, latents, c_noise, image_embeds, time_ids, indicator)
    for hook in hooks:
        hook.remove()
    assert got.shape == (VIDEOS, FRAMES, TINY.out_channels, height, width)
    assert got.dtype == dtype
    assert expected.std() > 0.1  # a non-trivial output
    torch.testing.assert_close(got, expected, atol=atol, rtol=atol)


def test_time_ids_vector_matches_diffusers_add_time_proj():
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    proj = diffusers.models.embeddings.Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
    expected = proj(ids.flatten()).reshape(1, -1)
    got = time_ids_vector(6, 127, 0.02, batch=2)
    assert got.shape == (2, 768)
    torch.testing.assert_close(got, expected.expand(2, -1), atol=0, rtol=0)  # same float32 operations


def test_config_from_state_dict_recovers_tiny_and_official():
    state = SvdUNet(TINY).state_dict()
    assert config_from_state_dict(state, head_dim=TINY.head_dim) == TINY
    # head counts leave no trace: narrow models default to one head at level 0
    assert config_from_state_dict(state).head_dim == TINY.model_channels
    with torch.device("meta"):
        official = SvdUNet(SvdUNetConfig()).state_dict()
    assert config_from_state_dict(official) == SvdUNetConfig()
    assert sum(t.numel() for t in official.values()) == 1_524_623_082  # the SVD UNet's size


def test_config_from_state_dict_names_a_missing_key():
    prefixed = {"model.diffusion_model." + k: v for k, v in SvdUNet(TINY).state_dict().items()}
    with pytest.raises(ValueError, match=r"'input_blocks\.0\.0\.weight'.*prefix"):
        config_from_state_dict(prefixed)


def test_strict_round_trip_under_the_official_prefix():
    unet = _tiny_unet()
    prefix = "model.diffusion_model."
    checkpoint = {prefix + k: v.clone() for k, v in unet.state_dict().items()}
    stripped = {k.removeprefix(prefix): v for k, v in checkpoint.items()}
    loaded = SvdUNet(config_from_state_dict(stripped, head_dim=TINY.head_dim)).eval()
    loaded.load_state_dict(stripped, strict=True)
    inputs = _inputs(8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            _ours_forward(loaded, *inputs), _ours_forward(unet, *inputs), atol=0, rtol=0
        )


def test_ff_chunk_gives_the_same_output_in_several_pieces():
    unet = _tiny_unet()
    inputs = _inputs(8, 8)
    with torch.no_grad():
        whole = _ours_forward(unet, *inputs)
        unet.set_ff_chunk(7)
        calls = []
        temporal_ff = unet.input_blocks[1][1].time_stack[0].ff.net[2]
        hook = temporal_ff.register_forward_hook(lambda *args: calls.append(1))
        chunked = _ours_forward(unet, *inputs)
        hook.remove()
    rows = VIDEOS * FRAMES * 8 * 8
    assert len(calls) == -(-rows // 7)  # really chunked: one call per 7 tokens
    torch.testing.assert_close(chunked, whole, atol=ATOL, rtol=ATOL)  # matmul blocking differs
    unet.set_ff_chunk(0)
    with pytest.raises(ValueError, match="ff_chunk = -1"):
        unet.set_ff_chunk(-1)


def test_image_only_rows_ignore_the_other_frames():
    """With the indicator at 1 every merge takes the per-frame path alone, so a frame's output
    does not depend on its neighbours; at 0 (video) it does."""
    unet = _tiny_unet()
    latents, c_noise, image_embeds, time_ids = _inputs(8, 8)
    changed = latents.clone()
    changed[:, 1] += 1.0
    for indicator, neighbours_matter in ((torch.ones(VIDEOS, FRAMES), False), (None, True)):
        with torch.no_grad():
            before = _ours_forward(unet, latents, c_noise, image_embeds, time_ids, indicator)
            after = _ours_forward(unet, changed, c_noise, image_embeds, time_ids, indicator)
        frame0_moved = (after[:, 0] - before[:, 0]).abs().max().item()
        assert (frame0_moved > 1e-3) is neighbours_matter, frame0_moved


def test_bfloat16_weights_run_close_to_float32():
    unet = _tiny_unet()
    inputs = _inputs(8, 8)
    with torch.no_grad():
        reference = _ours_forward(unet, *inputs)
        low = _ours_forward(unet.to(torch.bfloat16), *inputs)
    assert low.dtype == torch.float32  # returned in the input's dtype
    assert (low - reference).abs().max() < 0.1 * reference.abs().max()


def test_bad_inputs_name_the_field():
    unet = _tiny_unet()
    latents, c_noise, image_embeds, time_ids = _inputs(8, 8)
    x = latents.flatten(0, 1)
    y = torch.zeros(x.shape[0], TINY.adm_in_channels)
    context = image_embeds.repeat_interleave(FRAMES, 0)
    with pytest.raises(ValueError, match=r"x.shape = \(6, 8, 8, 8\).*videos\*4"):
        unet(x, c_noise, context, y, num_frames=4)
    with pytest.raises(ValueError, match=r"y.shape"):
        unet(x, c_noise.repeat_interleave(FRAMES), context, y[:, :5], num_frames=FRAMES)
    with pytest.raises(ValueError, match=r"image_only_indicator.shape"):
        unet(x, c_noise.repeat_interleave(FRAMES), context, y, FRAMES, torch.zeros(FRAMES, VIDEOS))
    with pytest.raises(ValueError, match=r"head_dim = 24"):
        SvdUNetConfig(model_channels=32, head_dim=24)
