"""State dict → motion-module family, from key names and shapes (docs/checkpoint-layouts.md).

Each fact about a checkpoint is a small named predicate; the rules combine them. Files that are
not motion modules (motion LoRA, SparseCtrl, PIA, the v3 domain adapter) are refused by name.
Where keys cannot tell two families apart the file name decides and the choice is logged; an
unknown layout raises with the evidence seen.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from .model import SitePlan
from .spec import SPECS, Family, MotionModuleSpec

log = logging.getLogger("animatediff")


class MotionModuleFormatError(ValueError):
    """The file is not a motion module we can load, or its family cannot be told."""


@dataclass(frozen=True)
class Evidence:
    """What detection saw; printed in every error so users can report it."""

    down_levels: int
    up_levels: int
    mid_block: bool
    pe_length: int | None
    down_widths: tuple[tuple[int, ...], ...]
    source_format: str  # "original", "diffusers" or "hotshot"

    def __str__(self) -> str:
        pe = "absent" if self.pe_length is None else f"{self.pe_length} rows"
        return (
            f"down levels {self.down_levels}, up levels {self.up_levels}, "
            f"mid block {'yes' if self.mid_block else 'no'}, positional table {pe}, "
            f"down widths {[list(level) for level in self.down_widths]}, key format {self.source_format}"
        )


@dataclass(frozen=True)
class Detection:
    spec: MotionModuleSpec
    variant: str  # e.g. "mm_sd_v15", "TemporalDiff"; the family label when the name says nothing
    state_dict: dict[str, torch.Tensor]  # motion keys only, original AnimateDiff names
    plan: SitePlan
    evidence: Evidence


# --- predicates on raw keys -------------------------------------------------------------------


def is_motion_lora(keys: list[str]) -> bool:
    return any("_lora." in k or ".lora_down." in k or ".lora_up." in k for k in keys) and any(
        "motion_modules" in k or "temporal" in k for k in keys
    )


def is_v3_adapter(keys: list[str]) -> bool:
    return any(("_lora." in k or "lora_" in k) and ".attentions." in k for k in keys)


def is_webui_lora(keys: list[str]) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te")) for k in keys)


def is_sparse_ctrl(keys: list[str]) -> bool:
    return any("controlnet_cond_embedding" in k for k in keys)


def is_pia(sd: Mapping[str, torch.Tensor]) -> bool:
    weight = sd.get("conv_in.weight")
    return weight is not None and weight.ndim == 4 and weight.shape[1] == 9


def is_hotshot_original(keys: list[str]) -> bool:
    return any(".temporal_attentions." in k or k.endswith("positional_encoding") for k in keys)


def is_diffusers_format(keys: list[str]) -> bool:
    return any(re.search(r"motion_modules\.\d+\.transformer_blocks\.", k) for k in keys)


# --- key conversion --------------------------------------------------------------------------


def from_hotshot_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HotShot-XL original names → AnimateDiff names (its site object is the transformer itself)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"\.temporal_attentions\.(\d+)\.", r".motion_modules.\1.temporal_transformer.", key)
        out[key.replace("pos_encoder.positional_encoding", "pos_encoder.pe")] = value
    return out


_FROM_DIFFUSERS = (
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
)


def from_diffusers_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter names → AnimateDiff names; its per-block PE goes to both attentions."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", key)
        if key.endswith(".pos_embed.pe"):
            stem = key[: -len("pos_embed.pe")]
            for a in (0, 1):
                out[f"{stem}attention_blocks.{a}.pos_encoder.pe"] = value.clone()
            continue
        for old, new in _FROM_DIFFUSERS:
            key = key.replace(old, new)
        out[key] = value
    return out


def normalize(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Refuse non-motion-module files, convert foreign key styles, keep only motion keys."""
    keys = list(sd)
    if is_sparse_ctrl(keys):
        raise MotionModuleFormatError(
            "this is a SparseCtrl model (controlnet_cond_embedding keys), not a motion module; "
            "load it through ControlNet, and pick a motion module here"
        )
    if is_pia(sd):
        raise MotionModuleFormatError(
            "this is a PIA model (conv_in with 9 input channels); PIA is not supported"
        )
    if is_v3_adapter(keys):
        raise MotionModuleFormatError(
            "this is the AnimateDiff v3 domain adapter, a LoRA on the spatial UNet; "
            "load it with the WebUI's LoRA syntax, not as a motion module"
        )
    if is_webui_lora(keys):
        raise MotionModuleFormatError(
            "this is a LoRA for the WebUI (lora_unet_ keys), not a motion module; "
            "load it with the WebUI's LoRA syntax"
        )
    if is_motion_lora(keys):
        raise MotionModuleFormatError(
            "this is a motion LoRA, not a motion module; load it with the WebUI's LoRA syntax "
            "on top of a v2 motion module"
        )
    source = "original"
    if is_hotshot_original(keys):
        sd, source = from_hotshot_keys(sd), "hotshot"
    elif is_diffusers_format(keys):
        sd, source = from_diffusers_keys(sd), "diffusers"
    motion = {k: v for k, v in sd.items() if ".motion_modules." in f".{k}"}
    return motion, source


# --- family rules ----------------------------------------------------------------------------

_V1_NAMES = (
    ("temporaldiff", "TemporalDiff"),
    ("stabilized_high", "mm-Stabilized_high"),
    ("stabilized_mid", "mm-Stabilized_mid"),
    ("stabilized", "mm-Stabilized"),
    ("v14", "mm_sd_v14"),
    ("v15", "mm_sd_v15"),
)


def _variant(family: Family, name: str) -> str:
    if family == Family.V1:
        return next((label for token, label in _V1_NAMES if token in name), SPECS[family].label)
    return SPECS[family].label


def _hinted(name: str, choice: Family, reason: str) -> Family:
    log.info("motion module %r: %s; chose %s from the file name", name, reason, SPECS[choice].label)
    return choice


def choose_family(ev: Evidence, name: str) -> Family:
    """Down levels (4 SD1.5, 3 SDXL), mid site and positional-table rows decide; the file name
    only where keys cannot (v1 vs v3 without a table, v2 vs Lightning). See docs/checkpoint-layouts.md."""
    low = name.lower()
    if ev.down_levels == 4 and ev.mid_block:
        if ev.pe_length is None or "lcm" in low:
            return Family.ANIMATELCM
        if "lightning" in low:
            return _hinted(name, Family.LIGHTNING, "v2 and Lightning have the same keys")
        return Family.V2
    if ev.down_levels == 4:
        if ev.pe_length == 24:
            return Family.V1
        if ev.pe_length == 32:
            return Family.V3
        if ev.pe_length is None:
            if "v3" in low:
                return _hinted(name, Family.V3, "no positional table, so v1 and v3 look alike")
            if any(token in low for token, _ in _V1_NAMES) or re.search(r"v1(?!\d)", low):
                return _hinted(name, Family.V1, "no positional table, so v1 and v3 look alike")
            raise MotionModuleFormatError(
                f"cannot tell v1 from v3: the file has no positional table ({ev}); v1 needs the "
                "across-frame GroupNorm and v3 does not. Rename the file to contain 'v3' or 'v1'"
            )
    if ev.down_levels == 3 and not ev.mid_block:
        if ev.source_format == "hotshot" or ev.pe_length == 24 or "hotshot" in low or "hsxl" in low:
            return Family.HOTSHOT_XL
        if ev.pe_length == 32 or (ev.pe_length is None and "sdxl" in low):
            return Family.SDXL_BETA
    raise MotionModuleFormatError(
        f"unknown motion-module layout: {ev}. Known: SD1.5 (4 levels; 24 rows = v1, 32 = v3, "
        "mid block = v2/Lightning/AnimateLCM) and SDXL (3 levels; 32 rows = SDXL beta, 24 = HotShot-XL)"
    )


def _check_complete(ev: Evidence, plan: SitePlan) -> None:
    """Every down level has 2 sites, every up level 3, and up mirrors down."""
    down_counts = [len(level) for level in plan.down]
    up_counts = [len(level) for level in plan.up]
    up_widths = [level[0] for level in plan.up]
    down_widths = [level[0] for level in plan.down]
    if (
        ev.down_levels == 0
        or down_counts != [2] * ev.down_levels
        or up_counts != [3] * ev.up_levels
        or ev.up_levels != ev.down_levels
        or up_widths != down_widths[::-1]
    ):
        raise MotionModuleFormatError(
            f"motion module is incomplete or truncated: modules per down level {down_counts} "
            f"(expected 2 each), per up level {up_counts} (expected 3 each); {ev}. "
            "The file may be damaged or only partly downloaded"
        )


def detect(sd: Mapping[str, torch.Tensor], name: str = "") -> Detection:
    """Classify a state dict (tensors only; wrappers already removed) into a family spec."""
    motion, source = normalize(sd)
    if not motion:
        raise MotionModuleFormatError(
            f"no motion-module keys in {name or 'the file'} ({len(sd)} tensors, e.g. {list(sd)[:3]}); "
            "this is not an AnimateDiff motion module"
        )
    try:
        plan = SitePlan.from_state_dict(motion)
    except ValueError as error:
        raise MotionModuleFormatError(f"motion module layout is damaged: {error}") from error
    ev = Evidence(len(plan.down), len(plan.up), plan.mid is not None, plan.pe_length, plan.down, source)
    _check_complete(ev, plan)
    family = choose_family(ev, name)
    spec = SPECS[family]
    if plan.pe_length is not None and plan.pe_length != spec.pe_length:
        spec = replace(spec, pe_length=plan.pe_length)
    log.debug("motion module %r detected as %s (%s)", name, spec.label, ev)
    return Detection(spec, _variant(family, name.lower()), motion, plan, ev)
