"""Real host, sgm: SDXL motion modules go into the WebUI checkout's own sgm ``UNetModel`` at
the right places and come out bit-exactly (``sgm_injection_probe.py`` runs under the WebUI's
interpreter, which has sgm's packages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_webui_python

pytestmark = pytest.mark.realhost
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(run_webui_python(HERE / "sgm_injection_probe.py")[-1])


@pytest.mark.parametrize("family", ["sdxl_beta", "hotshot_xl", "sdxl_beta_identity", "hotshot_xl_identity"])
def test_removal_restores_the_sgm_unet_bit_for_bit(report, family):
    found = report[family]
    assert found["sites"] == 15
    assert found["structure_same"] and found["state_same"], found
    assert found["restored"] == 0.0, found


def test_the_motion_module_changes_the_sgm_unet_output(report):
    assert report["sdxl_beta"]["changed"] > 1e-2
    assert report["hotshot_xl"]["changed"] > 1e-2
    # with every site the identity, only HotShot's across-frame GroupNorm remains
    assert report["sdxl_beta_identity"]["changed"] == 0.0
    assert report["hotshot_xl_identity"]["changed"] > 1e-3


def test_across_frame_group_norms_only_for_hotshot(report):
    assert report["sdxl_beta"]["norms"] == 0
    assert report["hotshot_xl"]["norms"] == 2 * 17 + 1  # 17 ResBlocks (in/out norms) and out[0]


def test_sites_sit_after_the_layers_and_before_each_upsample(report):
    layout = report["sdxl_beta"]["layout"]
    assert layout["input_blocks[1]"] == ["ResBlock", "MotionBlock"]  # level 0 of SDXL: no attention
    assert layout["input_blocks[4]"] == ["ResBlock", "SpatialTransformer", "MotionBlock"]
    assert layout["input_blocks[3]"] == ["Downsample"]
    assert layout["output_blocks[2]"] == ["ResBlock", "SpatialTransformer", "MotionBlock", "Upsample"]
    assert layout["output_blocks[5]"] == ["ResBlock", "SpatialTransformer", "MotionBlock", "Upsample"]
    assert layout["output_blocks[8]"] == ["ResBlock", "MotionBlock"]
    motion = sum(names.count("MotionBlock") for names in layout.values())
    assert motion == 15
