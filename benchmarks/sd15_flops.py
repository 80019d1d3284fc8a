"""FLOPs of one SD1.5 job's parts, counted on the meta device: the floor a motion module sets.

Run with the WebUI's interpreter (it needs the checkout's ldm): builds the UNet and VAE from the
checkpoint's yaml on the meta device (no memory, no weights), the text encoder from its
config folder (on the CPU: 0.5 GB), a motion module of the v3 layout at the UNet's widths from this
repository's engine, and counts with ``torch.utils.flop_counter`` (matmuls and convolutions;
norms, softmax and copies are not FLOPs there). Prints one JSON object, per row of a UNet call:

* ``unet_row``: the UNet for one latent row at ``--latent`` × ``--latent`` with a 77-token context;
* ``mm_row``: the motion module for one row when it sees ``--window`` frames;
* ``mm_row_per_frame``: the part of ``mm_row`` that motion-module windows run once per frame, not
  once per window (proj_in, the first attention's q/k/v, proj_out: linear, per token);
* ``vae_frame``: the VAE decoder for one latent; ``text_pass``: the text encoder for one prompt;
* ``context_dim``: the width of a text-conditioning row.

    $SD_WEBUI_PYTHON benchmarks/sd15_flops.py --webui $SD_WEBUI_DIR --yaml model.yaml [--latent 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_TOKENS = 77


def counted(run) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def motion_plan(model_channels: int, channel_mult: list[int]):
    """The v3 site plan of an SD1.5-topology UNet: two sites per down level, three per up level."""
    from motion_module.model import SitePlan

    widths = [model_channels * m for m in channel_mult]
    down = tuple((w, w) for w in widths)
    up = tuple((w, w, w) for w in reversed(widths))
    return SitePlan(down=down, up=up, mid=None, pe_length=32)


def site_size(prefix: str, levels: int, latent: int) -> int:
    """The latent side a motion site at ``prefix`` sees when the UNet's input is ``latent`` wide:
    halved per level down, doubled back per level up."""
    kind, level = prefix.split(".")[:2]
    depth = int(level) if kind == "down_blocks" else levels - 1 - int(level)
    return max(1, latent >> depth)


def mm_flops(plan, rows: int, frames: int, latent: int) -> tuple[int, int]:
    """Every site of the module over ``rows`` rows of ``frames``-frame videos, and the part of it
    that is per token and window-independent; site resolution halves per level down and doubles
    per level up."""
    import torch

    from motion_module.model import MotionModule

    model = MotionModule(plan, plan.pe_length, device="meta")
    levels = len(plan.down)

    def sites():
        for prefix, width in plan.sites():
            yield model.get_submodule(prefix), width, site_size(prefix, levels, latent)

    def run() -> None:
        for site, width, size in sites():
            site(torch.empty(rows, width, size, size, device="meta"), frames)

    def per_frame() -> None:
        for site, width, size in sites():
            transformer = site.temporal_transformer
            tokens = torch.empty(rows // frames * size * size, frames, width, device="meta")
            h = transformer.proj_in(tokens)
            transformer.transformer_blocks[0].attention_blocks[0].project(h)
            transformer.proj_out(h)

    return counted(run), counted(per_frame)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webui", required=True)
    parser.add_argument(
        "--yaml", required=True, help="the checkpoint's config (its text encoder folder inside)"
    )
    parser.add_argument("--latent", type=int, default=8, help="latent side (image side / 8)")
    parser.add_argument("--window", type=int, default=16, help="frames the motion module sees at once")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), os.path.join(args.webui, "repositories", "stable-diffusion-stability-ai")]
    import torch
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = OmegaConf.load(args.yaml).model.params
    rows = 2 * args.window
    with torch.device("meta"):
        unet = instantiate_from_config(cfg.unet_config)
        vae = instantiate_from_config(cfg.first_stage_config)
        x = torch.empty(rows, 4, args.latent, args.latent)
        t = torch.zeros(rows, dtype=torch.long)
        context = torch.empty(rows, CONTEXT_TOKENS, cfg.unet_config.params.context_dim)
        with torch.no_grad():
            unet_call = counted(lambda: unet(x, t, context))
            vae_call = counted(lambda: vae.decode(torch.empty(1, 4, args.latent, args.latent)))
            unet_params = cfg.unet_config.params
            plan = motion_plan(unet_params.model_channels, list(unet_params.channel_mult))
            mm_call, mm_per_frame = mm_flops(plan, rows, args.window, args.latent)
    # transformers' causal mask reads a value (.item()), which the meta device cannot: a real
    # (random, 0.5 GB) text encoder on the CPU instead
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg.cond_stage_config.params.version))
    with torch.no_grad():
        text_call = counted(lambda: text(input_ids=torch.zeros(1, CONTEXT_TOKENS, dtype=torch.long)))
    print(
        json.dumps(
            {
                "unet_row": unet_call / rows,
                "mm_row": mm_call / rows,
                "mm_row_per_frame": mm_per_frame / rows,
                "vae_frame": vae_call,
                "text_pass": text_call,
                "latent": args.latent,
                "context_dim": int(cfg.unet_config.params.context_dim),
                "window": args.window,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
