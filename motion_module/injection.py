"""Insert a motion module into an ldm/sgm ``UNetModel`` and take it out again exactly.

Sites are found by structure (docs/checkpoint-layouts.md): in every input/output block holding a
ResBlock, after its last SpatialTransformer (else after the ResBlock), before any Upsample; in the
middle block before its last ResBlock for mid-block families. Block kinds are told by class name
and attributes, so this file never imports ldm or sgm. The whole plan is validated before the first
change; a failure part-way undoes what was done. Owns: ``inject``, ``Injection``, ``MotionBlock``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .frames import FrameLayout, TemporalWindows
from .groupnorm import across_frames_forward, unet_group_norms
from .layers import VanillaTemporalModule
from .model import MotionModule
from .spatial_chunks import chunk_spatial_layers

log = logging.getLogger("animatediff")

BASE_LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}


class InjectionError(RuntimeError):
    """The motion module does not fit this UNet, or the UNet already carries one."""


class MotionBlock(nn.Module):
    """What sits in a UNet block: one site module, told the frame count by the shared layout.

    ``TimestepEmbedSequential`` calls it with ``x`` only (b·f, c, h, w); the layout (not a global)
    says how many frames each video block holds in this call, and how much of the module's
    residual to add (motion strength; scale 1 without a mask runs the module untouched).
    """

    def __init__(self, motion: VanillaTemporalModule, layout: FrameLayout, prefix: str):
        super().__init__()
        self.motion = motion
        self.layout = layout
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strength = self.layout.strength
        scale = (
            None if strength.is_identity else strength.scale_at(x.shape[-2], x.shape[-1], x.device, x.dtype)
        )

        def motion(rows: torch.Tensor, frames: int, windows: TemporalWindows | None = None) -> torch.Tensor:
            return self.motion(rows, frames, scale, windows)

        return self.layout.run(motion, x, motion if self.motion.windows_in_tokens else None)

    def extra_repr(self) -> str:
        return self.prefix


# --- block structure ---------------------------------------------------------------------------


def _name(m: nn.Module) -> str:
    return type(m).__name__


def is_resblock(m: nn.Module) -> bool:
    return "ResBlock" in _name(m) or (hasattr(m, "in_layers") and hasattr(m, "out_layers"))


def is_resample_resblock(m: nn.Module) -> bool:
    return is_resblock(m) and bool(getattr(m, "updown", False))


def is_transformer(m: nn.Module) -> bool:
    return "SpatialTransformer" in _name(m) or (hasattr(m, "transformer_blocks") and hasattr(m, "proj_in"))


def is_downsample(m: nn.Module) -> bool:
    return "Downsample" in _name(m) or (is_resample_resblock(m) and getattr(m, "down", False))


def is_upsample(m: nn.Module) -> bool:
    return "Upsample" in _name(m) or (is_resample_resblock(m) and getattr(m, "up", False))


def _site_resblocks(block: nn.Module) -> list[int]:
    return [i for i, m in enumerate(block) if is_resblock(m) and not is_resample_resblock(m)]


@dataclass(frozen=True)
class Site:
    prefix: str  # checkpoint prefix of the motion module that goes here
    block: nn.Sequential
    index: int  # position in the block where it is inserted
    channels: int
    where: str  # "input_blocks[4]", for messages


def _layers(block: nn.Module) -> list[int]:
    """Indices of the ResBlocks and SpatialTransformers a motion module must follow."""
    return [i for i, m in enumerate(block) if is_transformer(m) or i in _site_resblocks(block)]


def _site(prefix: str, block: nn.Sequential, index: int, where: str) -> Site:
    res = block[_site_resblocks(block)[-1]]
    channels = getattr(res, "out_channels", None)
    if channels is None:
        raise InjectionError(f"{where}: {_name(res)} has no out_channels; cannot size a motion module")
    return Site(prefix, block, index, int(channels), where)


def find_sites(unet: nn.Module, with_mid: bool) -> list[Site]:
    """Every motion site of the UNet, in call order, named by the checkpoint prefix it takes.

    Down/up levels advance at each Downsample-only block / after each block holding an Upsample.
    """
    sites: list[Site] = []
    level, j = 0, 0
    for n, block in enumerate(unet.input_blocks):
        if _site_resblocks(block):
            after = _layers(block)[-1] + 1
            sites.append(_site(f"down_blocks.{level}.motion_modules.{j}", block, after, f"input_blocks[{n}]"))
            j += 1
        elif any(is_downsample(m) for m in block):
            level, j = level + 1, 0
    if with_mid:
        res = _site_resblocks(unet.middle_block)
        if len(res) < 2:
            raise InjectionError("middle block has fewer than two ResBlocks; no place for a mid-block module")
        sites.append(_site("mid_block.motion_modules.0", unet.middle_block, res[-1], "middle_block"))
    level, j = 0, 0
    for n, block in enumerate(unet.output_blocks):
        if _site_resblocks(block):
            after = _layers(block)[-1] + 1
            sites.append(_site(f"up_blocks.{level}.motion_modules.{j}", block, after, f"output_blocks[{n}]"))
            j += 1
        if any(is_upsample(m) for m in block):
            level, j = level + 1, 0
    return sites


def unet_levels(unet: nn.Module) -> int:
    downsamples = [
        b for b in unet.input_blocks if any(is_downsample(m) for m in b) and not _site_resblocks(b)
    ]
    return 1 + len(downsamples)


def _blocks(unet: nn.Module) -> list[nn.Module]:
    return [*unet.input_blocks, unet.middle_block, *unet.output_blocks]


# --- editing a block in place (module-level so tests can inject a failure) ----------------------


def _insert_module(block: nn.Sequential, index: int, module: nn.Module) -> None:
    children = list(block._modules.values())
    children.insert(index, module)
    block._modules.clear()
    block._modules.update((str(i), m) for i, m in enumerate(children))


def _remove_module(block: nn.Sequential, module: nn.Module) -> None:
    children = list(block._modules.values())
    kept = [m for m in children if m is not module]
    if len(kept) != len(children) - 1:
        raise InjectionError(f"motion block {module!r} is no longer in its UNet block; cannot remove it")
    block._modules.clear()
    block._modules.update((str(i), m) for i, m in enumerate(kept))


def _patch_forward(module: nn.Module, make: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Give one instance a new forward chaining to its current one; return the exact undo."""
    had_own = "forward" in module.__dict__
    own = module.__dict__.get("forward")

    def current(x: torch.Tensor, m: nn.Module = module) -> torch.Tensor:
        return type(m).forward(m, x)

    module.forward = make(own if had_own else current)

    def undo() -> None:
        if had_own:
            module.forward = own
        else:
            del module.__dict__["forward"]

    return undo


# --- the handle ----------------------------------------------------------------------------------


class Injection:
    """A motion module inside one UNet; ``remove()`` restores the UNet exactly (idempotent)."""

    def __init__(self, unet: nn.Module, layout: FrameLayout, model: MotionModule):
        self.unet = unet
        self.layout = layout
        self.model = model
        self.blocks: list[MotionBlock] = []
        self.group_norms: list[nn.GroupNorm] = []
        self.spatial_chunks = False  # per-frame layers honour layout.spatial_rows
        self._undo: list[Callable[[], None]] = []
        self.removed = False

    def remove(self) -> None:
        first_error: BaseException | None = None
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except BaseException as error:  # restore everything else, then report the first failure
                log.error("removing the motion module: an undo step failed: %s", error)
                first_error = first_error or error
        self.removed = True
        if first_error is not None:
            raise first_error


def _resolve(motion: Any) -> tuple[MotionModule, str, str, bool]:
    """(model, base, label, GN-across-frames-in-UNet) from a LoadedMotionModule or a bare model."""
    model = getattr(motion, "model", motion)
    if not isinstance(model, MotionModule):
        raise TypeError(f"expected a LoadedMotionModule or MotionModule, got {type(motion).__name__}")
    spec = getattr(motion, "spec", None) or model.spec
    base = spec.base if spec is not None else model.base
    label = spec.label if spec is not None else "motion module"
    return model, base, label, bool(spec and spec.gn_across_frames_in_unet)


def inject(
    unet: nn.Module,
    motion: Any,
    layout: FrameLayout,
    base: str,
    gn_across_frames: bool | None = None,
) -> Injection:
    """Insert every site of ``motion`` into ``unet`` (and the UNet GroupNorm variant if the family
    needs it, or as ``gn_across_frames`` says). ``base`` is the loaded UNet's model ("sd15"/"sdxl").

    Refuses, before changing anything, a base mismatch, a layout mismatch or a second injection.
    """
    model, mm_base, label, family_gn = _resolve(motion)
    if base not in BASE_LABELS:
        raise ValueError(f"base {base!r} is unknown; use 'sd15' or 'sdxl'")
    if mm_base != base:
        raise InjectionError(
            f"{label} is a {BASE_LABELS[mm_base]} motion module, but the loaded checkpoint is "
            f"{BASE_LABELS[base]}; pick a {BASE_LABELS[base]} motion module or load a {BASE_LABELS[mm_base]} checkpoint"
        )
    if any(isinstance(m, MotionBlock) for block in _blocks(unet) for m in block):
        raise InjectionError("this UNet already carries a motion module; remove it before injecting again")

    sites = find_sites(unet, with_mid=model.plan.mid is not None)
    modules = model.site_modules()
    wanted = [prefix for prefix, _ in model.plan.sites()]
    found = [site.prefix for site in sites]
    if found != wanted:
        raise InjectionError(
            f"{label} has {len(wanted)} sites ({len(model.plan.down)} levels) but this {BASE_LABELS[base]} "
            f"UNet offers {len(found)} ({unet_levels(unet)} levels): missing {sorted(set(wanted) - set(found))[:4]}, "
            f"extra {sorted(set(found) - set(wanted))[:4]}"
        )
    wrong = [
        f"{s.where}: UNet {s.channels}, module {modules[s.prefix].channels}"
        for s in sites
        if modules[s.prefix].channels != s.channels
    ]
    if wrong:
        raise InjectionError(f"{label} channel widths do not match this UNet: " + "; ".join(wrong[:4]))
    use_gn = family_gn if gn_across_frames is None else gn_across_frames
    resblocks = [m for block in _blocks(unet) for m in block if is_resblock(m)]
    norms = unet_group_norms(unet, resblocks) if use_gn else []

    injection = Injection(unet, layout, model)
    try:
        for site in sites:
            block = MotionBlock(modules[site.prefix], layout, site.prefix)
            _insert_module(site.block, site.index, block)
            injection._undo.append(lambda b=site.block, m=block: _remove_module(b, m))
            injection.blocks.append(block)
        for norm in norms:
            injection._undo.append(_patch_forward(norm, lambda f: across_frames_forward(f, layout)))
            injection.group_norms.append(norm)
        if not norms:  # layers are per frame: they may run over chunks of rows (spatial_chunks)
            injection._undo.append(chunk_spatial_layers(unet, layout, (MotionBlock,)))
            injection.spatial_chunks = True
    except BaseException:
        injection.remove()
        raise
    log.info("injected %s: %d sites, across-frame GroupNorm on %d UNet norms", label, len(sites), len(norms))
    return injection
