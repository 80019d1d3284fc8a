"""What the builtin Lora extension reads from a LoRA file during a job: official and diffusers
motion LoRAs and the official v3 adapter renamed to the layer names it knows, and a refusal for a
motion-LoRA file that fits no layer of the loaded model.

The Lora extension would drop such keys silently (the LoRA would do nothing, or half of it would),
so the renaming happens where it reads the file (``host_changes.lora_file_reading``), and the
key forms and the refusal rules live in ``motion_module.motion_lora``. Any other LoRA file passes
through untouched. A refusal stops the job (HTTP 422): the Lora extension itself would only log it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from motion_module import motion_lora

from . import failure, host_model

log = logging.getLogger("animatediff")

Convert = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]


def converter(job: Any, sd_model: Any) -> Convert:
    """``convert(filename, state_dict)`` for this job's model (motion layers already named)."""

    def convert(filename: str, state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
        form = motion_lora.lora_form([k for k, v in state_dict.items() if isinstance(v, torch.Tensor)])
        if form is None:
            return state_dict
        name = os.path.basename(filename)
        layers = layer_shapes(getattr(sd_model, "network_layer_mapping", None) or {})
        try:
            fit = motion_lora.fit_to_layers(
                motion_lora.to_layer_names(state_dict), layers, name, _what(job, form)
            )
        except motion_lora.MotionLoraError as error:
            job.error = job.error or failure.as_error(error)
            log.error("AnimateDiff: %s", error)
            return {}
        if fit.skipped:
            log.info(
                "AnimateDiff: LoRA file %s: %d of its layers are not in the loaded model and are left "
                "out (e.g. %s)",
                name,
                len(fit.skipped),
                fit.skipped[0],
            )
        log.info(
            "AnimateDiff: LoRA file %s (%s keys) applies to %d layers", name, form, len(fit.state_dict) // 2
        )
        return fit.state_dict

    return convert


def layer_shapes(mapping: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Weight shape [out, in] of every Linear the Lora extension knows by name."""
    return {
        name: tuple(module.weight.shape)
        for name, module in mapping.items()
        if isinstance(module, torch.nn.Linear)
    }


def _what(job: Any, form: str) -> str:
    """What a file of ``form`` must fit, for the message."""
    host = getattr(job, "host", None)
    base = host_model.BASE_LABELS.get(getattr(host, "base", ""), "")
    if form == "adapter":
        return f"{base} checkpoint".strip()
    loaded = getattr(job, "loaded", None)
    label = getattr(getattr(loaded, "spec", None), "label", "")
    return f"{label} motion module".strip()
