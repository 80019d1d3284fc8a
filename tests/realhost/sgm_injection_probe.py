"""Injects random SDXL motion modules into the WebUI checkout's own sgm ``UNetModel`` and takes
them out again; prints what it measured as JSON for ``test_sgm_unet.py``.

Runs under the WebUI's interpreter (sgm needs its packages): the UNet is built from the tiny
SDXL config of ``make_assets.py`` with random weights; the motion modules come from
``tests/factories.py`` and load through this repository's engine.

    python sgm_injection_probe.py --webui /path/to/webui
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FRAMES = 4


def structure(unet) -> list:
    return [(name, id(m), type(m).__name__, "forward" in m.__dict__) for name, m in unet.named_modules()]


def block_layout(unet) -> dict:
    """Class names in each input/output block, e.g. output_blocks 2: ResBlock, SpatialTransformer,
    MotionBlock, Upsample."""
    return {
        f"{kind}[{i}]": [type(m).__name__ for m in block]
        for kind in ("input_blocks", "output_blocks")
        for i, block in enumerate(getattr(unet, kind))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webui", required=True)
    args = parser.parse_args()
    sys.path[:0] = [os.path.join(args.webui, "repositories", "generative-models"), REPO, HERE]
    import torch
    from make_assets import randomize, sdxl_config
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    from motion_module.detect import detect
    from motion_module.frames import FrameLayout
    from motion_module.injection import inject
    from motion_module.loading import build_module
    from tests.factories import MINI_SDXL, make_mm_state_dict

    torch.manual_seed(0)
    params = sdxl_config(args.webui, text_dir="unused").model.params.network_config.params
    unet = UNetModel(**{k: v for k, v in params.items()}).eval().requires_grad_(False)
    randomize(unet, 1)
    gen = torch.Generator().manual_seed(2)
    rows = 2 * FRAMES  # cond and uncond of one video
    x = torch.randn(rows, 4, 16, 16, generator=gen)
    t = torch.full((rows,), 500.0)
    context = torch.randn(rows, 7, params.context_dim, generator=gen)
    y = torch.randn(rows, params.adm_in_channels, generator=gen)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return unet(x, timesteps=t, context=context, y=y)

    plain, before = run(), structure(unet)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    report = {}
    for family in ("sdxl_beta", "hotshot_xl"):
        for identity in (False, True):
            sd = make_mm_state_dict(family, MINI_SDXL, std=0.05, seed=5)
            if identity:  # proj_out zero: every site adds nothing
                sd = {k: (torch.zeros_like(v) if ".proj_out." in k else v) for k, v in sd.items()}
            found = detect(sd, f"{family}.safetensors")
            loaded = build_module(found, "cpu", torch.float32)
            layout = FrameLayout()
            injection = inject(unet, loaded, layout, "sdxl")  # the family decides the GroupNorm
            layout_inside = block_layout(unet)
            with layout.using(FRAMES):
                injected = run()
            injection.remove()
            restored = run()
            after = structure(unet)
            report[f"{family}{'_identity' if identity else ''}"] = {
                "sites": len(injection.blocks),
                "norms": len(injection.group_norms),
                "changed": float((injected - plain).abs().max()),
                "restored": float((restored - plain).abs().max()),
                "structure_same": after == before,
                "state_same": all(torch.equal(v, state[k]) for k, v in unet.state_dict().items()),
                "layout": layout_inside,
            }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
