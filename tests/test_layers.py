"""The temporal transformer against diffusers' AnimateDiffTransformer3D (diffusers 0.42).

Across-frames mode must equal stock diffusers; per-frame mode must equal diffusers with its
GroupNorm applied frame by frame; and the two modes must really differ.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from factories import make_mm_state_dict, site_tensors, to_diffusers_keys
from torch import nn

from motion_module.detect import detect
from motion_module.layers import (
    Linear,
    TemporalSelfAttention,
    VanillaTemporalModule,
    chunked_attention,
    sinusoidal_table,
)
from motion_module.loading import build_module
from motion_module.spec import Family

pytestmark = pytest.mark.usefixtures("single_thread")


class PerFrameNorm(nn.Module):
    """diffusers hands its norm (b, c, f, h, w); normalise each frame on its own instead."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.inner = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = self.inner(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.view(b, f, c, h, w).transpose(1, 2)


def diffusers_site(ours: VanillaTemporalModule, per_frame: bool) -> nn.Module:
    c = ours.channels
    pe_len = ours.temporal_transformer.transformer_blocks[0].attention_blocks[0].pos_encoder.pe.shape[1]
    ref = AnimateDiffTransformer3D(
        num_attention_heads=8,
        attention_head_dim=c // 8,
        in_channels=c,
        num_layers=1,
        norm_num_groups=32,
        cross_attention_dim=None,
        activation_fn="geglu",
        attention_bias=False,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=pe_len,
        double_self_attention=True,
    )
    sd = {f"m.temporal_transformer.{k}": v for k, v in ours.temporal_transformer.state_dict().items()}
    converted = {k[len("m.") :]: v for k, v in to_diffusers_keys(sd, keep_pe=False).items()}
    result = ref.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and all("pos_embed" in k for k in result.missing_keys)
    if per_frame:
        ref.norm = PerFrameNorm(ref.norm)
    return ref.eval()


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    err = (ours - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item() + 1e-6, f"max |Δ| {err} vs max |ref| {ref.abs().max().item()}"


def compare(site: VanillaTemporalModule, b: int, f: int, hw: int, seed: int = 0) -> None:
    x = torch.randn(b * f, site.channels, hw, hw, generator=torch.Generator().manual_seed(seed))
    tt = site.temporal_transformer
    with torch.no_grad():
        outputs = {}
        for across in (False, True):
            tt.norm_across_frames = across
            ours = site(x, f)
            ref = diffusers_site(site, per_frame=not across)(x, num_frames=f)
            assert_close(ours, ref)
            outputs[across] = ours
    assert (outputs[True] - outputs[False]).abs().max() > 1e-3, (
        "per-frame and across-frames norms must differ"
    )


@pytest.mark.parametrize("index,family", list(enumerate(Family)))
def test_each_family_layout_matches_diffusers(index: int, family: Family) -> None:
    """One site per family (widths 32/64/128 in turn), loaded through detection as a file would be."""
    found = detect(make_mm_state_dict(family), "lightning" if family == Family.LIGHTNING else "")
    model = build_module(found, "cpu", torch.float32)
    width = (32, 64, 128)[index % 3]
    site = next(m for m in model.site_modules().values() if m.channels == width)
    assert site.temporal_transformer.norm_across_frames == found.spec.gn_across_frames_in_module
    frames = min(found.spec.pe_length, 16) if index % 2 else 8
    compare(site, b=1 + index % 2, f=frames, hw=4, seed=index)


@pytest.mark.parametrize("b,f", [(1, 24), (2, 32)])
def test_longest_windows_match_diffusers(b: int, f: int) -> None:
    site = VanillaTemporalModule(64, 32)
    site.temporal_transformer.load_state_dict(
        site_tensors(64, torch.Generator().manual_seed(1), 0.05, 32, torch.float32, "cpu")
    )
    compare(site, b, f, hw=4)


def test_full_width_site_matches_diffusers() -> None:
    site = VanillaTemporalModule(320, 32)
    site.temporal_transformer.load_state_dict(
        site_tensors(320, torch.Generator().manual_seed(2), 0.05, 32, torch.float32, "cpu")
    )
    compare(site, b=2, f=16, hw=4)


def test_positional_table_matches_diffusers_and_is_length_independent() -> None:
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    ref = SinusoidalPositionalEmbedding(64, 32).pe
    assert torch.equal(sinusoidal_table(32, 64), ref)
    assert torch.equal(sinusoidal_table(64, 64)[:, :24], sinusoidal_table(24, 64))


def test_chunked_attention_equals_one_call() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(37, 8, 16, 8, generator=gen) for _ in range(3))
    whole = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(chunked_attention(q, k, v, max_rows=8 * 5), whole, atol=1e-6)

    attention = TemporalSelfAttention(32, 24)
    x = torch.randn(50, 16, 32, generator=gen)
    with torch.no_grad():
        full = attention(x)
        attention.max_rows = 8 * 7  # forces 8 chunks
        assert torch.allclose(attention(x), full, atol=1e-6)


def test_too_many_frames_names_the_limit() -> None:
    site = VanillaTemporalModule(32, 24)
    with pytest.raises(ValueError, match="24 position slots"):
        site(torch.randn(32, 32, 2, 2), 32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_fp32(dtype: torch.dtype) -> None:
    site = VanillaTemporalModule(64, 32)
    site.temporal_transformer.load_state_dict(
        site_tensors(64, torch.Generator().manual_seed(3), 0.05, 32, torch.float32, "cpu")
    )
    x = torch.randn(16, 64, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = site(x, 8)
        half = site.to(dtype)(x.to(dtype), 8)
    assert half.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    assert (half.float() - ref).abs().max() <= tol * ref.abs().max()


def test_fp8_stored_weights_compute_in_working_dtype() -> None:
    site = VanillaTemporalModule(64, 32)
    site.temporal_transformer.load_state_dict(
        site_tensors(64, torch.Generator().manual_seed(5), 0.05, 32, torch.float32, "cpu")
    )
    x = torch.randn(16, 64, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = site(x, 8)
        for layer in site.modules():
            if isinstance(layer, Linear):
                layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
        y = site(x, 8)
    assert y.dtype == torch.float32
    assert (y - ref).abs().max() <= 0.1 * ref.abs().max()  # fp8 rounding, not garbage
    assert not torch.equal(y, ref)


def test_class_level_linear_patches_reach_every_projection(monkeypatch) -> None:
    """The WebUI Lora extension merges LoRA weights by patching nn.Linear.forward on the class."""
    site = VanillaTemporalModule(32, 24)
    calls = []
    original = torch.nn.Linear.forward

    def patched(self, x):
        calls.append(self)
        return original(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", patched)
    with torch.no_grad():
        site(torch.randn(8, 32, 2, 2), 4)
    linears = [m for m in site.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 12 and {id(m) for m in calls} == {id(m) for m in linears}
