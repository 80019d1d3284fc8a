"""Motion-LoRA and v3-adapter files → the layer names the WebUI's Lora extension knows them by.

The Lora extension matches a file key's part before the first "." against its layer names and
drops every key it cannot place, silently. Motion LoRAs come in three key forms and the v3 domain
adapter in a fourth (docs/checkpoint-layouts.md, "Motion LoRAs and the v3 adapter"); this module
renames the foreign ones to the converted form, so all forms give the same layers the same
``up @ down`` deltas, and tells the caller when a file fits no layer at all. Imports no WebUI
module.

Owns: ``MotionLoraError``, ``lora_form``, ``to_layer_names``, ``fit_to_layers``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

# A motion site as the official and diffusers files name it (diffusers drops
# "temporal_transformer." and prefixes "unet."), then the attention block (attention_blocks.a or
# attn1/attn2) and the projection with its LoRA half.
_SITE = r"(?P<site>(?:down_blocks|up_blocks)\.\d+\.motion_modules\.\d+|mid_block\.motion_modules\.\d+)"
_MOTION = re.compile(
    rf"^(?:unet\.)?{_SITE}\.(?:temporal_transformer\.)?transformer_blocks\.(?P<block>\d+)\."
    r"(?:attention_blocks\.(?P<a>\d+)|attn(?P<attn>[12]))\.(?P<rest>.+)$"
)
# A spatial attention of the SD1.5 UNet as the v3 adapter names it (diffusers UNet names).
_ADAPTER = re.compile(
    r"^(?:unet\.)?(?:(?P<kind>down_blocks|up_blocks)\.(?P<level>\d+)\.attentions\.(?P<index>\d+)|"
    r"(?P<mid>mid_block)\.attentions\.0)\.transformer_blocks\.(?P<block>\d+)\.(?P<attn>attn[12])\.(?P<rest>.+)$"
)
# The projection and the LoRA half: processor.to_q_lora.down.weight (official, diffusers),
# to_q.lora.down.weight, to_q.lora_A.weight (PEFT), to_q.lora_down.weight; to_out may carry ".0".
_PART = re.compile(
    r"^(?:processor\.(?P<p1>to_q|to_k|to_v|to_out)_lora\.(?P<h1>down|up)\.weight|"
    r"(?P<p2>to_q|to_k|to_v|to_out)(?:\.0)?\.(?:lora[._](?P<h2>down|up|A|B)\.weight|(?P<alpha>alpha)))$"
)
_HALF = {"down": DOWN, "A": DOWN, "up": UP, "B": UP}
# The A1111-converted form: the underscored layer path, then the LoRA half.
_CONVERTED = re.compile(
    r"^[a-z0-9_]*motion_modules_\d+_[a-z0-9_]*\.(?:lora_down\.weight|lora_up\.weight|alpha)$"
)


class MotionLoraError(ValueError):
    """A motion-LoRA or adapter file that fits none (or not all) of the layers it is for."""


def lora_form(keys: list[str]) -> str | None:
    """The form of a LoRA file's tensor keys: "official", "diffusers", "converted" (motion LoRAs),
    "adapter" (the v3 domain adapter), or None unless every key has that one form: any other
    file (a spatial LoRA, even one in diffusers names with attention keys among others) is not
    ours to touch."""
    forms = {_key_form(key) for key in keys}
    if len(forms) != 1:
        return None
    return forms.pop()


def _key_form(key: str) -> str | None:
    match = _MOTION.match(key)
    if match and _PART.match(match.group("rest")):
        return "diffusers" if match.group("attn") or key.startswith("unet.") else "official"
    match = _ADAPTER.match(key)
    if match and _PART.match(match.group("rest")):
        return "adapter"
    return "converted" if _CONVERTED.match(key) else None


def _motion_layer(match: re.Match) -> str:
    attention = match.group("a") if match.group("a") is not None else str(int(match.group("attn")) - 1)
    return (
        f"{match.group('site')}.temporal_transformer.transformer_blocks.{match.group('block')}."
        f"attention_blocks.{attention}"
    ).replace(".", "_")


def _adapter_layer(match: re.Match) -> str:
    """diffusers ``down_blocks.i.attentions.j`` = ldm ``input_blocks[1 + 3i + j][1]``,
    ``up_blocks.i.attentions.j`` = ``output_blocks[3i + j][1]``, the mid attention
    ``middle_block[1]``; the WebUI names them under ``diffusion_model``."""
    if match.group("mid"):
        block = "middle_block_1"
    else:
        level, index = int(match.group("level")), int(match.group("index"))
        if match.group("kind") == "down_blocks":
            block = f"input_blocks_{1 + 3 * level + index}_1"
        else:
            block = f"output_blocks_{3 * level + index}_1"
    return f"diffusion_model_{block}_transformer_blocks_{match.group('block')}_{match.group('attn')}"


def _renamed(key: str) -> str | None:
    """The converted key for one official, diffusers or adapter key; None if it is none of them."""
    for pattern, layer in ((_MOTION, _motion_layer), (_ADAPTER, _adapter_layer)):
        match = pattern.match(key)
        part = _PART.match(match.group("rest")) if match else None
        if part is None:
            continue
        projection = part.group("p1") or part.group("p2")
        projection = "to_out_0" if projection == "to_out" else projection
        half = ALPHA if part.group("alpha") else _HALF[part.group("h1") or part.group("h2")]
        return f"{layer(match)}_{projection}.{half}"
    return None


def to_layer_names(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Every LoRA tensor of the file under its converted key (``<layer name>.lora_down.weight`` /
    ``.lora_up.weight`` / ``.alpha``). Converted keys stay as they are (a kohya-style
    ``lora_unet_`` in front is dropped); non-tensor entries (the official files'
    ``animatediff_config``) and keys of no known form are left out."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key if _CONVERTED.match(key) else _renamed(key)
        if name is not None and name.startswith("lora_unet_"):  # kohya-style prefix of a converted key
            name = name[len("lora_unet_") :]
        if name is not None:
            out[name] = value
    return out


@dataclass(frozen=True)
class Fit:
    """What of a converted file the layers take: ``state_dict`` (the keys that fit) and the
    layer names of the file that no layer has (``skipped``), e.g. the mid site on a v3 module."""

    state_dict: dict[str, torch.Tensor]
    skipped: tuple[str, ...]


def fit_to_layers(
    converted: Mapping[str, torch.Tensor], layers: Mapping[str, tuple[int, ...]], file: str, family: str
) -> Fit:
    """Keep the keys whose layer is in ``layers`` (name → weight shape [out, in]).

    Refused with ``MotionLoraError`` naming ``file``: a file none of whose layers exists here, and
    one whose LoRA halves do not fit a layer's shape (a file made for another family).
    ``family`` names what is loaded, for the message.
    """
    by_layer: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in converted.items():
        layer, _, half = key.partition(".")
        by_layer.setdefault(layer, {})[half] = value
    found = {name: halves for name, halves in by_layer.items() if name in layers}
    if not found:
        example = next(iter(by_layer), "none")
        raise MotionLoraError(
            f"LoRA file {file}: none of its {len(by_layer)} layers is a layer of the loaded {family} "
            f"(e.g. {example}); a motion LoRA must be made for this motion module's family, and the v3 "
            "adapter for an SD1.5 checkpoint. Accepted forms: official (…processor.to_q_lora.down.weight), "
            "diffusers (unet.…attn1.processor.to_q_lora.down.weight) and A1111-converted "
            "(…_to_q.lora_down.weight) keys"
        )
    misfits = [
        f"{name}: file {_shape(halves)}, layer {tuple(layers[name])}"
        for name, halves in found.items()
        if not _fits(halves, layers[name])
    ]
    if misfits:
        raise MotionLoraError(
            f"LoRA file {file} does not fit the loaded {family}: {len(misfits)} of {len(found)} layers "
            f"have other shapes ({'; '.join(misfits[:3])}); it was made for another family or size"
        )
    kept = {f"{name}.{half}": value for name, halves in found.items() for half, value in halves.items()}
    skipped = tuple(sorted(set(by_layer) - set(found)))
    return Fit(kept, skipped)


def _fits(halves: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> bool:
    down, up = halves.get(DOWN), halves.get(UP)
    if down is None or up is None or down.ndim != 2 or up.ndim != 2:
        return False
    return up.shape[0] == shape[0] and down.shape[1] == shape[1] and up.shape[1] == down.shape[0]


def _shape(halves: Mapping[str, torch.Tensor]) -> str:
    down, up = halves.get(DOWN), halves.get(UP)
    if down is None or up is None:
        return f"only {', '.join(sorted(halves))}"
    return f"up {tuple(up.shape)} @ down {tuple(down.shape)}"
