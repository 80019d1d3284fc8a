"""Motion-module checkpoint families as frozen data, and the beta schedule each was trained with.

Detection (``detect.py``) picks one of these specs; the model, the injection and the WebUI adapter
only read its fields, so family differences live here and nowhere else (per-family table in
docs/checkpoint-layouts.md).

Owns: ``Family``, ``BetaSchedule``, ``MotionModuleSpec``, ``SPECS``, ``alphas_cumprod``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Family(str, Enum):
    """Behavioural family; files of one family differ only in their weights."""

    V1 = "v1"  # mm_sd_v14, mm_sd_v15, TemporalDiff, mm-Stabilized
    V2 = "v2"  # mm_sd_v15_v2
    V3 = "v3"  # v3_sd15_mm
    SDXL_BETA = "sdxl_beta"  # mm_sdxl_v10_beta
    HOTSHOT_XL = "hotshot_xl"
    ANIMATELCM = "animatelcm"
    LIGHTNING = "lightning"  # AnimateDiff-Lightning 1/2/4/8 step


@dataclass(frozen=True)
class BetaSchedule:
    """Training noise schedule over ``steps`` timesteps.

    ``linear``: betas evenly spaced from start to end (diffusers "linear", AnimateDiff's configs).
    ``scaled_linear``: evenly spaced in sqrt space, then squared (diffusers "scaled_linear").
    """

    kind: str
    beta_start: float
    beta_end: float
    steps: int = 1000


LINEAR_SD15 = BetaSchedule("linear", 0.00085, 0.012)
SCALED_LINEAR_SDXL = BetaSchedule("scaled_linear", 0.00085, 0.020)


@dataclass(frozen=True)
class MotionModuleSpec:
    """Everything about a family that changes inference, beyond the tensors themselves.

    ``pe_length`` is the number of positional slots, i.e. the most frames one window may hold.
    ``gn_across_frames_in_unet``: the UNet's ResBlock/out GroupNorms take statistics over all frames
    of a video (v1, HotShot). ``gn_across_frames_in_module``: the motion module's own GroupNorm does
    (SDXL beta); otherwise it normalises each frame separately.
    """

    family: Family
    label: str
    base: str  # "sd15" or "sdxl": the UNet the module fits
    levels: int  # down levels carrying motion modules (4 for SD1.5, 3 for SDXL)
    mid_block: bool
    pe_length: int
    gn_across_frames_in_unet: bool
    gn_across_frames_in_module: bool
    beta_schedule: BetaSchedule

    @property
    def max_frames(self) -> int:
        return self.pe_length


def _sd15(family: Family, label: str, mid: bool, pe: int, unet_gn: bool) -> MotionModuleSpec:
    return MotionModuleSpec(family, label, "sd15", 4, mid, pe, unet_gn, False, LINEAR_SD15)


SPECS: dict[Family, MotionModuleSpec] = {
    Family.V1: _sd15(Family.V1, "AnimateDiff v1", mid=False, pe=24, unet_gn=True),
    Family.V2: _sd15(Family.V2, "AnimateDiff v2", mid=True, pe=32, unet_gn=False),
    Family.V3: _sd15(Family.V3, "AnimateDiff v3", mid=False, pe=32, unet_gn=False),
    Family.ANIMATELCM: _sd15(Family.ANIMATELCM, "AnimateLCM", mid=True, pe=64, unet_gn=False),
    Family.LIGHTNING: _sd15(Family.LIGHTNING, "AnimateDiff-Lightning", mid=True, pe=32, unet_gn=False),
    Family.SDXL_BETA: MotionModuleSpec(
        Family.SDXL_BETA, "AnimateDiff SDXL beta", "sdxl", 3, False, 32, False, True, SCALED_LINEAR_SDXL
    ),
    # HotShot's schedule is taken from the predecessor (linspace 0.00085..0.012); HotShot's own
    # scheduler config was not checked.
    Family.HOTSHOT_XL: MotionModuleSpec(
        Family.HOTSHOT_XL, "HotShot-XL", "sdxl", 3, False, 24, True, False, LINEAR_SD15
    ),
}


def betas(schedule: BetaSchedule) -> torch.Tensor:
    """The ``steps`` betas of a schedule, in float64."""
    if schedule.kind == "linear":
        return torch.linspace(schedule.beta_start, schedule.beta_end, schedule.steps, dtype=torch.float64)
    if schedule.kind == "scaled_linear":
        root = torch.linspace(
            schedule.beta_start**0.5, schedule.beta_end**0.5, schedule.steps, dtype=torch.float64
        )
        return root**2
    raise ValueError(f"beta schedule kind {schedule.kind!r} is unknown; use 'linear' or 'scaled_linear'")


def alphas_cumprod(spec: MotionModuleSpec | BetaSchedule) -> torch.Tensor:
    """Cumulative product of (1 - beta) for the family's schedule: float32, ``steps`` long.

    Float32 like the ``alphas_cumprod`` buffer of the WebUI's model, so it can be swapped in as is.
    """
    schedule = spec.beta_schedule if isinstance(spec, MotionModuleSpec) else spec
    return torch.cumprod(1.0 - betas(schedule), dim=0).to(torch.float32)
