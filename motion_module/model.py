"""The whole motion module: temporal transformers for every down, mid and up site of a UNet.

Built from the site widths found in the checkpoint (``SitePlan.from_state_dict``), never from a
fixed table, so scaled-down test files load exactly like full-size ones. Names follow the
checkpoint: ``down_blocks.{i}.motion_modules.{j}``, ``mid_block.motion_modules.0``,
``up_blocks.{i}.motion_modules.{j}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .layers import PositionalEncoding, VanillaTemporalModule
from .spec import MotionModuleSpec

SITE_KEY = re.compile(r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?motion_modules\.(\d+)\.")


@dataclass(frozen=True)
class SitePlan:
    """Channel widths of every site: ``down[i][j]`` is down level i, module j (same for up)."""

    down: tuple[tuple[int, ...], ...]
    up: tuple[tuple[int, ...], ...]
    mid: int | None
    pe_length: int | None  # rows of the positional table in the file; None if the file has none

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> SitePlan:
        """Read the site layout from the GroupNorm weights (one per site) and the PE buffers."""
        down: dict[int, dict[int, int]] = {}
        up: dict[int, dict[int, int]] = {}
        mid: int | None = None
        pe_rows: set[int] = set()
        for key, value in state_dict.items():
            if key.endswith("pos_encoder.pe"):
                pe_rows.add(int(value.shape[1]))
            match = SITE_KEY.match(key)
            if not match or not key.endswith("temporal_transformer.norm.weight"):
                continue
            kind, level, index = match.group(1), match.group(2), int(match.group(3))
            width = int(value.shape[0])
            if kind == "mid_block":
                mid = width
            else:
                (down if kind == "down_blocks" else up).setdefault(int(level), {})[index] = width
        if len(pe_rows) > 1:
            raise ValueError(f"positional tables of different lengths {sorted(pe_rows)} in one file")
        return cls(_levels(down), _levels(up), mid, pe_rows.pop() if pe_rows else None)

    def sites(self) -> Iterator[tuple[str, int]]:
        """(checkpoint prefix, width) of every site, in UNet order (down, mid, up)."""
        for i, level in enumerate(self.down):
            for j, width in enumerate(level):
                yield f"down_blocks.{i}.motion_modules.{j}", width
        if self.mid is not None:
            yield "mid_block.motion_modules.0", self.mid
        for i, level in enumerate(self.up):
            for j, width in enumerate(level):
                yield f"up_blocks.{i}.motion_modules.{j}", width


def _levels(found: dict[int, dict[int, int]]) -> tuple[tuple[int, ...], ...]:
    """Dense tuple of levels; gaps (a level or module index missing) are an error."""
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"motion-module levels {sorted(found)} are not contiguous from 0")
    levels = []
    for i in range(len(found)):
        modules = found[i]
        if sorted(modules) != list(range(len(modules))):
            raise ValueError(f"level {i} has motion modules {sorted(modules)}, not contiguous from 0")
        levels.append(tuple(modules[j] for j in range(len(modules))))
    return tuple(levels)


class _Level(nn.Module):
    def __init__(self, modules: list[VanillaTemporalModule]):
        super().__init__()
        self.motion_modules = nn.ModuleList(modules)


class MotionModule(nn.Module):
    """All sites of one checkpoint. ``spec`` is the detected family (None for bare test builds)."""

    def __init__(
        self,
        plan: SitePlan,
        pe_length: int,
        norm_across_frames: bool = False,
        spec: MotionModuleSpec | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.plan = plan
        self.spec = spec
        persistent = plan.pe_length is not None
        length = plan.pe_length or pe_length

        def site(width: int) -> VanillaTemporalModule:
            return VanillaTemporalModule(width, length, persistent, norm_across_frames, device)

        self.down_blocks = nn.ModuleList([_Level([site(w) for w in level]) for level in plan.down])
        self.mid_block = _Level([site(plan.mid)]) if plan.mid is not None else None
        self.up_blocks = nn.ModuleList([_Level([site(w) for w in level]) for level in plan.up])

    @classmethod
    def from_spec(cls, plan: SitePlan, spec: MotionModuleSpec, device=None) -> MotionModule:
        return cls(plan, spec.pe_length, spec.gn_across_frames_in_module, spec, device)

    @property
    def max_frames(self) -> int:
        return next(self.positional_encodings()).pe.shape[1]

    @property
    def base(self) -> str:
        return self.spec.base if self.spec is not None else ("sd15" if len(self.plan.down) == 4 else "sdxl")

    def positional_encodings(self) -> Iterator[PositionalEncoding]:
        return (m for m in self.modules() if isinstance(m, PositionalEncoding))

    def reset_positional_tables(self) -> None:
        """Fill tables the file does not store (left on the meta device by a meta build)."""
        for encoding in self.positional_encodings():
            if encoding.pe.is_meta:
                encoding.reset()

    def site_modules(self) -> dict[str, VanillaTemporalModule]:
        """Checkpoint prefix → site module, in UNet order."""
        return {prefix: self.get_submodule(prefix) for prefix, _ in self.plan.sites()}
