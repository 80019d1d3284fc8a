"""Test-only WebUI extension of the real-host tier: reports what the builtin Lora extension matched.

The Lora loader drops keys it cannot place with only a debug-level log line, so a LoRA that
half-matches looks like a weak LoRA. ``GET /realhost/loaded-networks`` lists, for each network of
the last job, the layer names its keys resolved to; the tier compares them with the file's keys.
Nothing in the product knows about it.
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


def _routes(_demo, app) -> None:
    app.add_api_route("/realhost/loaded-networks", _loaded_networks, methods=["GET"])


script_callbacks.on_app_started(_routes)
