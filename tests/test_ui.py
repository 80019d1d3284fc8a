"""The panel builds under the WebUI's gradio (3.41.2) and its component order is the parser's.

gradio 3.41.2 pins numpy < 2 and pillow < 11, which the rest of the test environment cannot
share, so the build runs in a child interpreter: the current one if it already has gradio
3.41.2, else $ANIMATEDIFF_GRADIO_PYTHON, else a cached virtual environment that this test creates
once (``pip install --target`` of gradio 3.41.2 and its pins into a cache folder that is put in
front of this environment's packages for the child only; about two minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from motion_module.params import FIELD_KEYS, AnimateDiffParams, flatten
from scripts.animatediff_webui import args as ad_args
from scripts.animatediff_webui import ui

ROOT = Path(__file__).resolve().parent.parent
GRADIO = "3.41.2"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "sd-webui-animatediff-next"
    / f"gradio-{GRADIO}-site"
)

PROBE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import gradio as gr
    assert gr.__version__ == sys.argv[2], gr.__version__
    from motion_module.params import AnimateDiffParams, parse_params, flatten
    from scripts.animatediff_webui import ui

    def describe(c):
        value = None if isinstance(c, (gr.Image, gr.Video, gr.Audio)) else c.value
        return {"type": type(c).__name__, "label": c.label, "visible": c.visible, "value": value,
                "minimum": getattr(c, "minimum", None), "maximum": getattr(c, "maximum", None),
                "choices": [x[0] if isinstance(x, (list, tuple)) else x for x in (getattr(c, "choices", None) or [])]}

    out = {}
    models = ["mm_sd15_v3.safetensors", "sub/hotshot_xl.safetensors"]
    for tab in ("txt2img", "img2img"):
        builds = []
        for _ in range(2):  # ui() runs several times per tab: it must build the same thing again
            with gr.Blocks() as demo:
                panel = ui.build(gr, is_img2img=tab == "img2img", defaults=AnimateDiffParams(),
                                 model_choices=lambda: models, elem_id=lambda k: f"{tab}_animatediff_{k}")
            demo.get_config_file()  # every component serialises for the browser
            builds.append([describe(c) for c in panel.components])
        values = [c.value if not isinstance(c, (gr.Image, gr.Video, gr.Audio)) else None for c in panel.components]
        out[tab] = {
            "components": builds[0],
            "same_twice": builds[0] == builds[1],
            "defaults_parse_back": parse_params(values) == AnimateDiffParams(),
            "infotext_fields": [name for _, name in panel.infotext_fields],
            "paste_field_names": panel.paste_field_names,
            "elem_ids": [c.elem_id for c in panel.components],
        }

    # The entry script as the WebUI loads it: executed from its file, WebUI modules faked.
    import importlib.util, types
    registered = {}
    fake = {name: types.ModuleType(name) for name in
            ("modules", "modules.scripts", "modules.script_callbacks", "modules.shared", "modules.ui_components",
             "modules.img2img")}
    def process_batch(p, *args, **kwargs):
        return "the WebUI's Batch tab loop"
    fake["modules.img2img"].process_batch = process_batch
    class Script:
        is_img2img = False
        def elem_id(self, item):
            return f"script_{'img2img' if self.is_img2img else 'txt2img'}_animatediff_{item}"
    fake["modules.scripts"].Script, fake["modules.scripts"].AlwaysVisible = Script, object()
    fake["modules.scripts"].scripts_data = []
    for hook in ("on_ui_settings", "on_cfg_denoiser", "on_infotext_pasted", "on_script_unloaded", "on_before_ui",
                 "on_ui_tabs", "on_after_component", "on_app_started"):
        setattr(fake["modules.script_callbacks"], hook, lambda cb, name=None, hook=hook: registered.setdefault(hook, cb))
    fake["modules.shared"].opts = types.SimpleNamespace(data={})
    fake["modules.shared"].cmd_opts = types.SimpleNamespace(animatediff_model_dir=None)
    fake["modules.shared"].sd_model = None
    fake["modules.ui_components"].ToolButton = lambda **kw: gr.Button(**kw)
    for name, module in fake.items():
        sys.modules[name] = module
        if "." in name:
            setattr(fake["modules"], name.split(".")[1], module)
    spec = importlib.util.spec_from_file_location("animatediff.py", sys.argv[1] + "/scripts/animatediff.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    script = entry.AnimateDiffScript()
    script.is_img2img = True
    with gr.Blocks():
        components = script.ui(True)
    out["entry"] = {
        "title": script.title(),
        "show_is_always_visible": script.show(True) is fake["modules.scripts"].AlwaysVisible,
        "labels": [c.label for c in components],
        "infotext_fields": len(script.infotext_fields),
        "callbacks": sorted(registered),
        "controlnet_modules": [
            m for m in ("scripts.animatediff_utils", "scripts.animatediff_i2ibatch", "scripts.animatediff_mm")
            if m in sys.modules
        ],
        "script_classes": [k for k, v in vars(entry).items() if isinstance(v, type) and issubclass(v, Script)],
        "batch_tab_hooked": getattr(fake["modules.img2img"].process_batch, "original", None) is process_batch,
    }
    print("PROBE" + json.dumps(out))
    """
)


def _has_gradio(command: list[str], env: dict[str, str]) -> bool:
    code = f"import gradio, sys; sys.exit(0 if gradio.__version__ == {GRADIO!r} else 1)"
    return subprocess.run([*command, "-c", code], capture_output=True, timeout=300, env=env).returncode == 0


def gradio_runner() -> tuple[list[str], dict[str, str]]:
    """(interpreter, environment) that imports gradio 3.41.2 next to this environment's packages."""
    env = dict(os.environ)
    if _has_gradio([sys.executable], env):
        return [sys.executable], env
    other = os.environ.get("ANIMATEDIFF_GRADIO_PYTHON", "")
    if other and _has_gradio([other], env):
        return [other], env
    # gradio and its pinned dependencies in a side folder that shadows this environment's copies
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CACHE), env.get("PYTHONPATH", "")]))
    if not _has_gradio([sys.executable], env):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(CACHE), f"gradio=={GRADIO}"],
            check=True,
            timeout=900,
            capture_output=True,
        )
    return [sys.executable], env


def run_probe(code: str) -> dict:
    """Run ``code`` (given the repository root and the gradio version as arguments) under gradio
    3.41.2; it prints one line "PROBE<json>", returned decoded."""
    command, env = gradio_runner()
    result = subprocess.run(
        [*command, "-c", code, str(ROOT), GRADIO], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("PROBE"))
    return json.loads(line[len("PROBE") :])


@pytest.fixture(scope="module")
def probe() -> dict:
    return run_probe(PROBE)


def test_widget_table_covers_the_field_table_exactly():
    assert set(ui.WIDGETS) == set(FIELD_KEYS)
    assert all(key in ui.WIDGETS for row in ui.ROWS for key in row)


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_component_order_matches_the_parser(probe, tab):
    built = probe[tab]["components"]
    assert [c["label"] for c in built] == [ui.WIDGETS[k].label for k in FIELD_KEYS]
    assert [c["type"] for c in built] == [ui.WIDGETS[k].kind for k in FIELD_KEYS]
    assert probe[tab]["elem_ids"] == [f"{tab}_animatediff_{k}" for k in FIELD_KEYS]
    assert probe[tab]["defaults_parse_back"]
    assert probe[tab]["same_twice"]


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_defaults_and_ranges_are_the_parsers(probe, tab):
    built = dict(zip(FIELD_KEYS, probe[tab]["components"], strict=True))
    defaults = {k: ad_args.ui_value(v) for k, v in flatten(AnimateDiffParams()).items()}
    for key, component in built.items():
        if key not in ("video_source", "last_frame", "audio"):  # uploads start empty
            assert component["value"] == defaults[key] or key == "model", key
    assert built["model"]["value"] == "mm_sd15_v3.safetensors"
    assert built["model"]["choices"] == ["mm_sd15_v3.safetensors", "sub/hotshot_xl.safetensors"]
    assert (built["batch_size"]["minimum"], built["batch_size"]["maximum"]) == (1, 64)
    assert built["closed_loop"]["choices"] == ["N", "R-P", "R+P", "A"]
    assert "Frame" not in built["format"]["choices"] and "GIF" in built["format"]["choices"]


def test_img2img_only_fields_are_hidden_on_txt2img(probe):
    for key, t2i, i2i in zip(
        FIELD_KEYS, probe["txt2img"]["components"], probe["img2img"]["components"], strict=True
    ):
        widget = ui.WIDGETS[key]
        assert i2i["visible"] == (not widget.hidden), key
        assert t2i["visible"] == (not widget.hidden and not widget.img2img_only), key


def test_entry_script_loads_like_the_webui_loads_it(probe):
    entry = probe["entry"]
    assert entry["title"] == "AnimateDiff" and entry["show_is_always_visible"]
    assert entry["labels"] == [ui.WIDGETS[k].label for k in FIELD_KEYS]
    assert entry["infotext_fields"] == len(probe["img2img"]["infotext_fields"])
    assert entry["callbacks"] == sorted(
        ["on_ui_settings", "on_cfg_denoiser", "on_infotext_pasted", "on_script_unloaded", "on_before_ui"]
        + ["on_ui_tabs", "on_after_component", "on_app_started"]  # the SVD tab, its send buttons, its API
    )
    assert entry["controlnet_modules"] == [
        "scripts.animatediff_utils",
        "scripts.animatediff_i2ibatch",
        "scripts.animatediff_mm",
    ]
    assert entry["batch_tab_hooked"]  # the img2img Batch tab reaches us without ControlNet too
    assert entry["script_classes"] == [
        "AnimateDiffScript"
    ]  # the WebUI registers every Script class in the file


def test_entry_script_refuses_a_foreign_motion_module(monkeypatch):
    import importlib.util
    import types

    foreign = types.ModuleType("motion_module")
    foreign.__file__ = "/webui/extensions/sd-webui-animatediff/motion_module.py"
    monkeypatch.setitem(sys.modules, "motion_module", foreign)
    spec = importlib.util.spec_from_file_location("animatediff.py", ROOT / "scripts" / "animatediff.py")
    with pytest.raises(ImportError, match="disable the other one"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_infotext_fields_bind_to_pasted_keys(probe):
    names = probe["img2img"]["infotext_fields"]
    assert names == probe["img2img"]["paste_field_names"]
    assert (
        "AnimateDiff enable" in names
        and "AnimateDiff format" in names
        and "AnimateDiff latent_power" in names
    )
    assert "AnimateDiff latent_power" not in probe["txt2img"]["infotext_fields"]
    # What on_infotext_pasted puts into the pasted parameters, per bound name:
    from motion_module.params import infotext_value, parse_params

    params = parse_params({"enable": True, "video_length": 24, "format": ["GIF", "MP4"], "closed_loop": "A"})
    fields = {"Prompt": "a cat", "AnimateDiff": infotext_value(params, is_img2img=True)}
    ad_args.expand_pasted("", fields)
    assert fields["AnimateDiff enable"] is True and fields["AnimateDiff video_length"] == 24
    assert fields["AnimateDiff format"] == ["GIF", "MP4"] and fields["AnimateDiff closed_loop"] == "A"
    assert set(names) <= set(fields)
