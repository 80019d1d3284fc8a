"""Test-only WebUI extension of the real-host tier: reports what the builtin Lora extension matched,
which model the WebUI made of the checkpoint, the conditioning the UNet got, and how many latents
the live previews decoded.

The Lora loader drops keys it cannot place with only a debug-level log line, so a LoRA that
half-matches looks like a weak LoRA. ``GET /realhost/loaded-networks`` lists, for each network of
the last job, the layer names its keys resolved to; the tier compares them with the file's keys.
``GET /realhost/first-cond`` describes the per-frame conditioning of the last job's first denoiser
call, as AnimateDiff left it (this callback is registered after AnimateDiff's).
``GET /realhost/preview-decodes`` counts the latents the live previews VAE-decoded since the last
call (and resets the count). Nothing in the product knows about it.
"""

import sys

import torch
from modules import script_callbacks

_first_cond: dict = {}


def _loaded_networks() -> dict:
    networks = sys.modules.get("networks")  # the builtin Lora extension's module
    if networks is None:
        return {"error": "the builtin Lora extension is not loaded"}
    return {
        net.name: {"layers": sorted(net.modules), "unet_multiplier": net.unet_multiplier}
        for net in networks.loaded_networks
    }


def _model() -> dict:
    """Which kind of model the WebUI made of the checkpoint, and where its UNet class lives."""
    from modules import shared

    model = shared.sd_model
    unet = model.model.diffusion_model
    return {
        "is_sdxl": bool(getattr(model, "is_sdxl", False)),
        "is_sd1": bool(getattr(model, "is_sd1", False)),
        "unet_class": f"{type(unet).__module__}.{type(unet).__name__}",
        "config": str(getattr(model, "used_config", "")),
    }


def _distances(rows: torch.Tensor) -> dict:
    """How far each frame's row is from the first frame's and from the last frame's."""
    flat = rows.reshape(rows.shape[0], -1).float()
    return {
        "from_first": (flat - flat[0]).norm(dim=1).tolist(),
        "from_last": (flat - flat[-1]).norm(dim=1).tolist(),
    }


def _record_cond(params) -> None:
    if params.sampling_step != 0 or getattr(params.denoiser, "step", 0) != 0:
        return
    cond = params.text_cond
    parts = cond.items() if isinstance(cond, dict) else [("tensor", cond)]
    _first_cond.clear()
    _first_cond.update({name: _distances(value) for name, value in parts})


_decodes = [0]


def _count_preview_decodes() -> None:
    from modules import sd_samplers_common

    original = sd_samplers_common.single_sample_to_image

    def counted(sample, *args, **kwargs):
        _decodes[0] += 1
        return original(sample, *args, **kwargs)

    sd_samplers_common.single_sample_to_image = counted


def _preview_decodes() -> dict:
    count, _decodes[0] = _decodes[0], 0
    return {"decodes": count}


def _routes(_demo, app) -> None:
    app.add_api_route("/realhost/first-cond", lambda: dict(_first_cond), methods=["GET"])
    app.add_api_route("/realhost/loaded-networks", _loaded_networks, methods=["GET"])
    app.add_api_route("/realhost/model", _model, methods=["GET"])
    app.add_api_route("/realhost/preview-decodes", _preview_decodes, methods=["GET"])


script_callbacks.on_app_started(_routes)
script_callbacks.on_cfg_denoiser(_record_cond, name="realhost conditioning probe")
_count_preview_decodes()
