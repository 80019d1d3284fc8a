"""Test-only WebUI extension of the real-host tier: reports what the builtin Lora extension matched,
and how many latents the live previews decoded.

The Lora loader drops keys it cannot place with only a debug-level log line, so a LoRA that
half-matches looks like a weak LoRA. ``GET /realhost/loaded-networks`` lists, for each network of
the last job, the layer names its keys resolved to; the tier compares them with the file's keys.
``GET /realhost/preview-decodes`` counts the latents the live previews VAE-decoded since the last
call (and resets the count). Nothing in the product knows about it.
"""

import sys

from modules import script_callbacks


def _loaded_networks() -> dict:
    networks = sys.modules.get("networks")  # the builtin Lora extension's module
    if networks is None:
        return {"error": "the builtin Lora extension is not loaded"}
    return {
        net.name: {"layers": sorted(net.modules), "unet_multiplier": net.unet_multiplier}
        for net in networks.loaded_networks
    }


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
    app.add_api_route("/realhost/loaded-networks", _loaded_networks, methods=["GET"])
    app.add_api_route("/realhost/preview-decodes", _preview_decodes, methods=["GET"])


_count_preview_decodes()


script_callbacks.on_app_started(_routes)
