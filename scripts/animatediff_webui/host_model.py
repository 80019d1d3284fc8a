"""What the WebUI has loaded, as plain handles (SD1.5 or SDXL, its UNet, dtype and device), and
the session steps that change that model: inject, beta schedule, Lora layer names.

The only place that reads the WebUI model object's flags. SD2, SD3 and anything else without
motion modules is refused here with a message, before any host object changes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from motion_module import injection as mm_injection
from motion_module import spec as mm_spec
from motion_module.frames import FrameLayout
from motion_module.loading import LoadedMotionModule

from .patch_session import PatchSession

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
    WebUI's FP8 weight storage on, the motion module's weights are stored in FP8 too."""
    dtype, storage_dtype = getattr(devices, "dtype_unet", None), None
    if dtype is not None and dtype.itemsize == 1:  # fp8 storage: compute in the working dtype
        dtype, storage_dtype = getattr(devices, "dtype", torch.float16), dtype
    return describe(
        shared.sd_model, dtype=dtype, device=getattr(devices, "device", None), storage_dtype=storage_dtype
    )


def _checkpoint_name(sd_model: Any) -> str:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return str(
        getattr(info, "name_for_extra", None) or getattr(info, "title", None) or type(sd_model).__name__
    )


# --- the model steps of a patch session ---------------------------------------------------


def open_model_steps(
    session: PatchSession, host: HostModel, loaded: LoadedMotionModule, layout: FrameLayout
) -> None:
    """Every change to the model, each with its undo: inject (with the UNet GroupNorm variant
    where the family needs it), the family's beta schedule, Lora names for motion LoRAs."""
    injected = session.step(
        "inject motion module",
        lambda: mm_injection.inject(host.unet, loaded, layout, host.base),
        lambda injection: injection.remove(),
    )
    log.info(
        "AnimateDiff: injected %s into the %s UNet (%d sites)",
        loaded.spec.label,
        host.base,
        len(injected.blocks),
    )
    session.step(
        "beta schedule",
        lambda: swap_schedule(host.sd_model, mm_spec.alphas_cumprod(loaded.spec)),
        lambda undo: undo(),
    )
    log.info("AnimateDiff: beta schedule %s", loaded.spec.beta_schedule.kind)
    session.step(
        "Lora layer names",
        lambda: name_motion_layers(host.sd_model, host.unet, injected, host.dtype),
        lambda undo: undo(),
    )
    session.step("forget cached Lora networks", forget_cached_networks, lambda _: None)


_MISSING = object()


def swap_schedule(sd_model: Any, alphas: torch.Tensor) -> Callable[[], None]:
    """Set ``alphas_cumprod`` and its ``_original`` twin (the WebUI resets the first from the
    second every batch) to the family's schedule; return the exact undo."""
    old = sd_model.alphas_cumprod
    old_original = getattr(sd_model, "alphas_cumprod_original", _MISSING)
    new = alphas.to(device=old.device, dtype=old.dtype)
    sd_model.alphas_cumprod = new
    sd_model.alphas_cumprod_original = new

    def undo() -> None:
        sd_model.alphas_cumprod = old
        if old_original is _MISSING:
            del sd_model.alphas_cumprod_original
        else:
            sd_model.alphas_cumprod_original = old_original

    return undo


def forget_cached_networks() -> None:
    """Make the builtin Lora extension read the prompt's LoRAs again for this job. It reuses a
    network read for an earlier job with the layers it matched then; one read while no motion
    layers were registered matched none of them and would leave a motion LoRA out, silently.
    Marking the cached networks out of date (it re-reads a file newer than its ``mtime``) keeps
    the rest of its bookkeeping (bundled embeddings) as it is. A cache: nothing to undo."""
    networks = sys.modules.get("networks")  # the builtin Lora extension's module
    loaded, in_memory = (getattr(networks, n, None) for n in ("loaded_networks", "networks_in_memory"))
    if isinstance(loaded, list) and isinstance(in_memory, dict):
        for net in [*loaded, *in_memory.values()]:
            net.mtime = float("-inf")


def name_motion_layers(
    sd_model: Any, unet: torch.nn.Module, injected: Any, dtype: torch.dtype | None = None
) -> Callable[[], None]:
    """Make motion LoRAs in the prompt (``<lora:…>``) reach the injected layers through the builtin
    Lora extension; return the exact undo.

    A1111-converted motion LoRAs key each layer by its motion-module path with "." → "_"
    (``down_blocks_0_motion_modules_0_…_to_q.lora_down.weight``). The extension files a LoRA's
    weights under the mapping key it matched and applies them to the layer whose
    ``network_layer_name`` equals that key, so both are that one name. Its LoRA loader accepts only
    layers whose type is exactly ``nn.Linear`` (network_lora.py), so for the session the motion
    Linears that compute in the working dtype are plain ``nn.Linear`` (same forward); Linears
    stored in another dtype (FP8) keep their casting forward and are left out of the mapping.
    """
    mapping = getattr(sd_model, "network_layer_mapping", None)
    if not isinstance(mapping, dict):
        return lambda: None
    ours = {id(block) for block in injected.blocks}
    added: dict[str, Any] = {}
    retyped: list[tuple[torch.nn.Module, type]] = []
    left_out = 0
    for block in [m for m in unet.modules() if id(m) in ours]:
        for inner, module in block.motion.named_modules():
            if isinstance(module, torch.nn.Linear) and type(module) is not torch.nn.Linear:
                if dtype is not None and module.weight.dtype != dtype:
                    left_out += 1
                    continue
                retyped.append((module, type(module)))
                module.__class__ = torch.nn.Linear
            key = f"{block.prefix}.{inner}".rstrip(".").replace(".", "_")
            added.setdefault(key, mapping.get(key, _MISSING))
            mapping[key] = module
            module.network_layer_name = key
    if left_out:
        log.info("AnimateDiff: motion LoRAs skip %d motion layers stored in another dtype (FP8)", left_out)

    def undo() -> None:
        for module, cls in reversed(retyped):
            module.__class__ = cls
        for key, previous in added.items():
            if previous is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = previous

    return undo
