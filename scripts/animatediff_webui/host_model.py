"""What the WebUI has loaded, as plain handles (SD1.5 or SDXL, its UNet, dtype and device), and
the names the motion layers get for the builtin Lora extension.

The only place that reads the WebUI model object's flags; it changes nothing (see host_changes). SD2, SD3 and anything else without
motion modules is refused here with a message, before any host object changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("animatediff")


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class HostModel:
    sd_model: Any  # the WebUI's model object (holds alphas_cumprod and the Lora name mapping)
    unet: torch.nn.Module  # ldm/sgm UNetModel: input_blocks, middle_block, output_blocks, out
    base: str  # "sd15" or "sdxl", the motion-module spec's vocabulary
    dtype: torch.dtype
    device: torch.device
    storage_dtype: torch.dtype | None = None  # float8 when the WebUI stores UNet weights in FP8

    @property
    def blocks(self) -> tuple[Any, Any, Any]:
        return self.unet.input_blocks, self.unet.middle_block, self.unet.output_blocks


def base_of(sd_model: Any) -> str:
    """ "sd15" or "sdxl"; raises UnsupportedModelError naming what is loaded."""
    name = _checkpoint_name(sd_model)
    if getattr(sd_model, "is_sd3", False):
        raise UnsupportedModelError(f"AnimateDiff: SD3 checkpoints have no motion modules (loaded: {name})")
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        raise UnsupportedModelError(
            f"AnimateDiff: SD2 checkpoints have no motion modules (loaded: {name}); "
            "load an SD1.5 checkpoint (or SDXL with an SDXL motion module)"
        )
    if getattr(sd_model, "is_sd1", False) or not hasattr(sd_model, "is_sd1"):
        return "sd15"
    raise UnsupportedModelError(f"AnimateDiff: cannot tell which base model {name} is (not SD1.5/SDXL)")


def describe(
    sd_model: Any,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    storage_dtype: torch.dtype | None = None,
) -> HostModel:
    """Handles for the loaded model; dtype/device default to the UNet's own parameters."""
    base = base_of(sd_model)
    try:
        unet = sd_model.model.diffusion_model
    except AttributeError:
        raise UnsupportedModelError(
            f"AnimateDiff: the loaded model {_checkpoint_name(sd_model)} has no "
            "model.diffusion_model (is this the WebUI Forge backend? it is not supported)"
        ) from None
    first = next(unet.parameters(), None)
    dtype = dtype or (first.dtype if first is not None else torch.float32)
    device = device or (first.device if first is not None else torch.device("cpu"))
    return HostModel(sd_model, unet, base, dtype, torch.device(device), storage_dtype)


def current(shared: Any, devices: Any) -> HostModel:
    """The model the WebUI will sample with now, in the working dtype the UNet runs in. With the
    WebUI's FP8 weight storage on (``devices.fp8``: its Linear and Conv2d weights are float8,
    ``dtype_unet`` stays the working dtype), the motion module's Linear weights are stored in FP8
    too."""
    dtype, storage_dtype = getattr(devices, "dtype_unet", None), None
    if dtype is not None and dtype.itemsize == 1:  # a float8 working dtype: compute in devices.dtype
        dtype, storage_dtype = getattr(devices, "dtype", torch.float16), dtype
    elif getattr(devices, "fp8", False) is True:
        storage_dtype = torch.float8_e4m3fn  # what the WebUI casts its own weights to
    return describe(
        shared.sd_model, dtype=dtype, device=getattr(devices, "device", None), storage_dtype=storage_dtype
    )


BASE_LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}


def base_mismatch(model: str, label: str, module_base: str, host: HostModel, available: list[str]) -> str:
    """The refusal of a motion module made for the other base model; names both sides and the
    files that would fit."""
    mine, theirs = BASE_LABELS[module_base], BASE_LABELS[host.base]
    return (
        f"AnimateDiff: model = {model!r} ({label}) is made for {mine} checkpoints, but the loaded "
        f"checkpoint {_checkpoint_name(host.sd_model)} is {theirs}; pick a motion module made for "
        f"{theirs} (available: {', '.join(available[:10]) or 'none in the folder'}) or load an {mine} checkpoint"
    )


def _checkpoint_name(sd_model: Any) -> str:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return str(
        getattr(info, "name_for_extra", None) or getattr(info, "title", None) or type(sd_model).__name__
    )


# --- names the builtin Lora extension knows the motion layers by -----------------------------


def motion_layer_names(unet: torch.nn.Module, injected: Any) -> dict[str, Any]:
    """{Lora layer name: module} for every layer of the injected motion modules.

    A1111-converted motion LoRAs key each layer by its motion-module path with "." → "_"
    (``down_blocks_0_motion_modules_0_…_to_q.lora_down.weight``). The Lora extension files a
    LoRA's weights under the ``network_layer_mapping`` key a file key matched and applies them to
    the layer whose ``network_layer_name`` equals that key, so both are that one name
    (``host_changes.lora_layer_names`` sets them). Linears stored in FP8 are named too: the Lora
    extension merges into FP8 weights as it does for the UNet's own, and while sampling they
    compute under the WebUI's autocast like the UNet's.
    """
    ours = {id(block) for block in injected.blocks}
    layers: dict[str, Any] = {}
    for block in [m for m in unet.modules() if id(m) in ours]:
        for inner, module in block.motion.named_modules():
            layers.setdefault(f"{block.prefix}.{inner}".rstrip(".").replace(".", "_"), module)
    return layers
