"""Shared test builders: fabricated motion-module state dicts and tiny real ldm UNets.

State dicts use the real key names of each family (docs/checkpoint-layouts.md) at any width, so
mini files go through exactly the code path full-size ones do. UNets are ldm ``UNetModel``s with
random (non-zero) weights in SD1.5 topology (4 levels) and SDXL topology (3 levels, attention at
levels 1-2). Other test files import these; keep signatures stable.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator

import torch
from torch import nn

from motion_module.layers import sinusoidal_table
from motion_module.spec import SPECS, Family

MINI_SD15 = (32, 64, 128, 128)
MINI_SDXL = (32, 64, 128)
FULL_SD15 = (320, 640, 1280, 1280)
FULL_SDXL = (320, 640, 1280)

_MID_FAMILIES = (Family.V2, Family.ANIMATELCM, Family.LIGHTNING)


def site_prefixes(widths: tuple[int, ...], mid: bool) -> list[tuple[str, int]]:
    """(prefix, width) of every site for down widths ``widths``: 2 per down level, 3 per up level."""
    sites = [(f"down_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(widths) for j in range(2)]
    if mid:
        sites.append(("mid_block.motion_modules.0", widths[-1]))
    sites += [(f"up_blocks.{i}.motion_modules.{j}", c) for i, c in enumerate(widths[::-1]) for j in range(3)]
    return sites


def site_tensors(
    c: int, gen: torch.Generator | None, std: float, pe_len: int | None, dtype: torch.dtype, device: str
) -> dict[str, torch.Tensor]:
    """The 26 parameters (+2 PE buffers) of one site, keys relative to ``temporal_transformer.``."""
    shapes: dict[str, tuple[int, ...]] = {
        "norm.weight": (c,),
        "norm.bias": (c,),
        "proj_in.weight": (c, c),
        "proj_in.bias": (c,),
        "proj_out.weight": (c, c),
        "proj_out.bias": (c,),
    }
    t = "transformer_blocks.0."
    for a in (0, 1):
        for p in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[f"{t}attention_blocks.{a}.{p}.weight"] = (c, c)
        shapes[f"{t}attention_blocks.{a}.to_out.0.bias"] = (c,)
        shapes[f"{t}norms.{a}.weight"] = (c,)
        shapes[f"{t}norms.{a}.bias"] = (c,)
    shapes.update(
        {
            f"{t}ff.net.0.proj.weight": (8 * c, c),
            f"{t}ff.net.0.proj.bias": (8 * c,),
            f"{t}ff.net.2.weight": (c, 4 * c),
            f"{t}ff.net.2.bias": (c,),
            f"{t}ff_norm.weight": (c,),
            f"{t}ff_norm.bias": (c,),
        }
    )
    out = {}
    for key, shape in shapes.items():
        if device == "meta":
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
            continue
        value = torch.randn(shape, generator=gen) * std
        if "norm" in key and key.endswith("weight"):
            value = value + 1.0
        out[key] = value.to(dtype)
    if pe_len is not None:
        table = sinusoidal_table(pe_len, c)
        for a in (0, 1):
            out[f"{t}attention_blocks.{a}.pos_encoder.pe"] = (
                torch.empty(table.shape, dtype=dtype, device="meta")
                if device == "meta"
                else table.to(dtype).clone()
            )
    return out


def make_mm_state_dict(
    family: Family | str,
    widths: tuple[int, ...] | None = None,
    pe_len: int | None = None,
    std: float = 0.05,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    include_pe: bool | None = None,
) -> dict[str, torch.Tensor]:
    """A motion-module state dict of ``family`` in the original AnimateDiff key format.

    ``widths``: down-level widths (default mini: SD1.5 (32, 64, 128, 128), SDXL (32, 64, 128)).
    ``pe_len``: PE rows (default: the family's); ``include_pe`` False drops the tables (AnimateLCM
    has none by default). ``device="meta"`` gives shape-only tensors for full-size detection tests.
    proj_out is non-zero on purpose: a zero proj_out makes the module the identity.
    """
    family = Family(family)
    spec = SPECS[family]
    widths = widths or (MINI_SD15 if spec.base == "sd15" else MINI_SDXL)
    if include_pe is None:
        include_pe = family != Family.ANIMATELCM
    pe = (pe_len or spec.pe_length) if include_pe else None
    gen = torch.Generator().manual_seed(seed) if device != "meta" else None
    sd = {}
    for prefix, c in site_prefixes(widths, family in _MID_FAMILIES):
        for key, value in site_tensors(c, gen, std, pe, dtype, device).items():
            sd[f"{prefix}.temporal_transformer.{key}"] = value
    return sd


# --- container and key-style variants -----------------------------------------------------------


def wrap_state_dict(sd: dict) -> dict:
    """As the official train.py writes it: under "state_dict", next to step counters."""
    return {"state_dict": dict(sd), "epoch": 3, "global_step": 1000}


def with_non_tensor(sd: dict) -> dict:
    return {**sd, "animatediff_config": {"version": "v2"}}


def with_unet_keys(sd: dict, seed: int = 0) -> dict:
    """A full-UNet training checkpoint also holds the spatial UNet's own weights."""
    gen = torch.Generator().manual_seed(seed)
    extra = {
        "conv_in.weight": torch.randn(32, 4, 3, 3, generator=gen),
        "conv_in.bias": torch.randn(32, generator=gen),
        "down_blocks.0.resnets.0.norm1.weight": torch.randn(32, generator=gen),
        "down_blocks.0.attentions.0.proj_in.weight": torch.randn(32, 32, generator=gen),
        "mid_block.resnets.0.conv1.weight": torch.randn(32, 32, 3, 3, generator=gen),
    }
    return {**extra, **sd}


_TO_DIFFUSERS = (
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
    (".temporal_transformer.", "."),
)


def to_diffusers_keys(sd: dict, keep_pe: bool = True) -> dict:
    """Original names → diffusers MotionAdapter names (one ``pos_embed.pe`` per transformer block)."""
    out = {}
    for key, value in sd.items():
        if "pos_encoder.pe" in key:
            if keep_pe and ".attention_blocks.0." in key:
                stem = key.split("attention_blocks.0.")[0].replace(".temporal_transformer.", ".")
                out[f"{stem}pos_embed.pe"] = value
            continue
        for old, new in _TO_DIFFUSERS:
            key = key.replace(old, new)
        out[key] = value
    return out


def to_hotshot_keys(sd: dict) -> dict:
    """Original names → HotShot-XL's own (``temporal_attentions.j``, ``positional_encoding``)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"\.motion_modules\.(\d+)\.temporal_transformer\.", r".temporal_attentions.\1.", key)
        out[key.replace("pos_encoder.pe", "pos_encoder.positional_encoding")] = value
    return out


def make_motion_lora(
    widths: tuple[int, ...] = MINI_SD15, rank: int = 4, seed: int = 0, mid: bool = True
) -> dict:
    """An official motion LoRA (``…processor.to_q_lora.down.weight``) for every attention
    projection of the sites of ``widths`` (v2 family: with the mid site)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, c in site_prefixes(widths, mid=mid):
        for a in (0, 1):
            for p in ("to_q", "to_k", "to_v", "to_out"):
                stem = f"{prefix}.temporal_transformer.transformer_blocks.0.attention_blocks.{a}.processor.{p}_lora"
                out[f"{stem}.down.weight"] = torch.randn(rank, c, generator=gen)
                out[f"{stem}.up.weight"] = torch.randn(c, rank, generator=gen)
    return out


def diffusers_lora_keys(sd: dict) -> dict:
    """Official motion-LoRA keys → the diffusers conversion's (``unet.`` prefix, no
    ``temporal_transformer.``, ``attention_blocks.0/1`` → ``attn1/attn2``)."""
    out = {}
    for key, value in sd.items():
        key = key.replace(".temporal_transformer.", ".")
        key = key.replace(".attention_blocks.0.", ".attn1.").replace(".attention_blocks.1.", ".attn2.")
        out["unet." + key] = value
    return out


def converted_lora_keys(sd: dict) -> dict:
    """Official motion-LoRA keys → the A1111-converted form: the layer's path with "." → "_"
    (``to_out`` is the layer ``to_out.0``), then ``.lora_down.weight`` / ``.lora_up.weight``."""
    out = {}
    for key, value in sd.items():
        stem, _, half = key.partition(".processor.")
        projection, _, rest = half.partition("_lora.")
        projection = "to_out.0" if projection == "to_out" else projection
        layer = f"{stem}.{projection}".replace(".", "_")
        out[f"{layer}.lora_{rest.split('.')[0]}.weight"] = value
    return out


# SD1.5 UNet attentions in diffusers names: down levels 0-2 (2 each), mid, up levels 1-3 (3 each)
ADAPTER_ATTENTIONS = (
    [f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)]
    + ["mid_block.attentions.0"]
    + [f"up_blocks.{i}.attentions.{j}" for i in range(1, 4) for j in range(3)]
)


def make_full_v3_adapter(
    widths: tuple[int, ...] = MINI_SD15, context_dim: int = 64, rank: int = 4, seed: int = 0
) -> dict:
    """The v3 domain adapter's official keys for every spatial attention of an SD1.5 UNet with
    down widths ``widths``: attn1 and attn2, q/k/v/out; attn2's to_k/to_v read ``context_dim``."""
    gen = torch.Generator().manual_seed(seed)
    width = {"down": widths, "mid": widths[-1:], "up": widths[::-1]}
    out = {}
    for attention in ADAPTER_ATTENTIONS:
        parts = attention.split(".")
        kind, level = parts[0].split("_")[0], (0 if parts[0] == "mid_block" else int(parts[1]))
        c = width[kind][level]
        for attn in ("attn1", "attn2"):
            for p in ("to_q", "to_k", "to_v", "to_out"):
                c_in = context_dim if attn == "attn2" and p in ("to_k", "to_v") else c
                stem = f"{attention}.transformer_blocks.0.{attn}.processor.{p}_lora"
                out[f"{stem}.down.weight"] = torch.randn(rank, c_in, generator=gen)
                out[f"{stem}.up.weight"] = torch.randn(c, rank, generator=gen)
    return out


def make_v3_adapter(rank: int = 4) -> dict:
    stem = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
    return {f"{stem}.down.weight": torch.zeros(rank, 32), f"{stem}.up.weight": torch.zeros(32, rank)}


def make_sparse_ctrl() -> dict:
    return {**make_mm_state_dict("v3"), "controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 4, 3, 3)}


def make_pia() -> dict:
    return {**make_mm_state_dict("v1"), "conv_in.weight": torch.zeros(32, 9, 3, 3)}


# --- tiny ldm UNets ------------------------------------------------------------------------------


def randomize_(module: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Non-zero weights everywhere (ldm zero-initialises output convs, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.02 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(fan_in))
    return module


def _ldm_unet(seed: int, **topology) -> nn.Module:
    """A random-weight ldm UNetModel (4 latent channels, 2 res blocks per level) of the given topology."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(
        image_size=16,
        in_channels=4,
        out_channels=4,
        num_res_blocks=2,
        use_spatial_transformer=True,
        transformer_depth=1,
        legacy=False,
        **topology,
    )
    return randomize_(unet, seed).eval().requires_grad_(False)


def make_sd15_unet(model_channels: int = 32, context_dim: int = 64, seed: int = 0) -> nn.Module:
    """ldm UNetModel in SD1.5 topology: mult (1,2,4,4), attention at levels 0-2, 8 heads."""
    return _ldm_unet(
        seed,
        model_channels=model_channels,
        context_dim=context_dim,
        attention_resolutions=(4, 2, 1),
        channel_mult=(1, 2, 4, 4),
        num_heads=8,
    )


def make_sdxl_unet(model_channels: int = 32, context_dim: int = 64, seed: int = 0) -> nn.Module:
    """ldm UNetModel in SDXL topology: mult (1,2,4), attention only at levels 1-2, linear proj."""
    return _ldm_unet(
        seed,
        model_channels=model_channels,
        context_dim=context_dim,
        attention_resolutions=(2, 4),
        channel_mult=(1, 2, 4),
        num_head_channels=8,
        use_linear_in_transformer=True,
    )


def unet_inputs(rows: int, size: int = 16, context_dim: int = 64, seed: int = 0):
    """(x, timesteps, context) for one UNet call of ``rows`` rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, size, size, generator=gen)
    t = torch.full((rows,), 500, dtype=torch.long)
    context = torch.randn(rows, 7, context_dim, generator=gen)
    return x, t, context


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run with ``n`` intra-op threads, then restore. Tiny models on a shared 2-core machine run
    several times faster single-threaded (thread contention dominates their runtime)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def sd15_model_fields(unet: nn.Module, mapping: dict) -> dict:
    """The attributes of the WebUI's SD1.5 model object a job reads and changes."""
    from types import SimpleNamespace

    alphas = torch.linspace(0.999, 0.01, 1000)
    return dict(
        model=SimpleNamespace(diffusion_model=unet),
        alphas_cumprod=alphas,
        alphas_cumprod_original=alphas,
        is_sd1=True,
        is_sd2=False,
        is_sdxl=False,
        is_sd3=False,
        network_layer_mapping=mapping,
        sd_checkpoint_info=SimpleNamespace(name_for_extra="tiny-sd15"),
    )


def install_fake_webui(monkeypatch, *, sd_model, state, model_dir, **more_modules):
    """Small ``modules``, ``modules.shared`` and ``modules.devices`` (plus ``more_modules``, e.g.
    ``sd_samplers_common``) in sys.modules for the test; returns the fake ``shared``."""
    import sys
    import types
    from types import SimpleNamespace

    shared = types.ModuleType("modules.shared")
    shared.opts = SimpleNamespace(data={"animatediff_model_path": str(model_dir)})
    shared.cmd_opts = SimpleNamespace()
    shared.sd_model, shared.state = sd_model, state
    devices = types.ModuleType("modules.devices")
    devices.device, devices.dtype, devices.dtype_unet = torch.device("cpu"), torch.float32, torch.float32
    modules = types.ModuleType("modules")
    children = {"shared": shared, "devices": devices, **more_modules}
    for name, module in children.items():
        setattr(modules, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", modules)
    return shared
