"""The adapter's small pieces without a WebUI: script-args doors, XYZ axes, settings, model
folder, paste expansion, host-model checks and the ControlNet seams."""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from motion_module.params import (
    FIELD_KEYS,
    AnimateDiffParams,
    ExportFormat,
    Fusion,
    WindowMode,
    flatten,
    parse_params,
)
from scripts.animatediff_webui import args as ad_args
from scripts.animatediff_webui import host_model, settings, xyz

BASE = AnimateDiffParams()


def test_api_dict_in_first_slot_stands_for_the_request():
    ui_defaults = [ad_args.ui_value(v) for k, v in flatten(BASE).items() if k in FIELD_KEYS]
    script_args = [{"enable": True, "video_length": 24, "request_id": "r"}, *ui_defaults[1:]]
    p = ad_args.from_script_args(script_args, base=BASE)
    assert (p.enable, p.frames, p.request_id) == (True, 24, "r")


def test_positional_api_list_and_predecessor_object():
    listed = ad_args.from_script_args(["mm.safetensors", True, 12, 10], base=BASE)
    obj = SimpleNamespace(model="mm.safetensors", enable=True, video_length=12, fps=10, is_i2i_batch=False)
    assert ad_args.from_script_args([obj], base=BASE) == listed
    assert (listed.model, listed.frames, listed.export.fps) == ("mm.safetensors", 12, 10)


def test_xyz_overrides_win_and_are_not_shared_between_cells():
    p = SimpleNamespace()
    xyz.apply("video_length")(p, "32", None)
    xyz.apply("closed_loop")(p, "A", None)
    cell = SimpleNamespace(**vars(p))  # XYZ cells are shallow copies of one p
    xyz.apply("video_length")(cell, "8", None)
    assert getattr(p, ad_args.XYZ_ATTR) == {"video_length": "32", "closed_loop": "A"}
    params = ad_args.for_job(cell, [{"enable": True, "video_length": 16}], BASE)
    assert (params.frames, params.window.closed_loop.value) == (8, "A")


def test_xyz_confirm_refuses_bad_values_before_the_plot():
    xyz.confirm("fps")(None, ["8", "12"])
    with pytest.raises(ValueError, match="fps = 'fast'"):
        xyz.confirm("fps")(None, ["8", "fast"])


def test_xyz_axes_register_once_with_img2img_only_kinds():
    class AxisOption:
        def __init__(
            self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None
        ):
            self.label, self.type, self.apply, self.confirm, self.choices = (
                label,
                type,
                apply,
                confirm,
                choices,
            )
            self.format_value = format_value

    class AxisOptionImg2Img(AxisOption):
        pass

    module = SimpleNamespace(AxisOption=AxisOption, AxisOptionImg2Img=AxisOptionImg2Img, axis_options=[])
    module.__name__ = "xyz_grid.py"
    data = [SimpleNamespace(module=SimpleNamespace(__name__="other.py")), SimpleNamespace(module=module)]
    assert xyz.find_xyz_module(data) is module
    assert xyz.register(module) == len(xyz.AXES) and xyz.register(module) == 0
    labels = {o.label: o for o in module.axis_options}
    assert isinstance(labels["[AnimateDiff] Latent power"], AxisOptionImg2Img)
    assert labels["[AnimateDiff] Closed loop"].choices() == ["N", "R-P", "R+P", "A"]
    assert {a.key for a in xyz.AXES} <= set(FIELD_KEYS)
    option = labels["[AnimateDiff] Video length"]
    assert option.format_value(None, option, 24) == "Video length: 24"


def test_settings_become_the_parse_base():
    data = {
        "animatediff_default_save_formats": ["MP4", "TXT"],
        "animatediff_mp4_crf": 18,
        "animatediff_webp_lossless": True,
        "animatediff_window_fusion": "flat",
        "animatediff_frame_budget": 0,
        "animatediff_window_mode": "motion_module",
        "animatediff_travel_interpolation": "linear",
    }
    base = settings.base_params(lambda k, d: data.get(k, d))
    assert base.export.formats == (ExportFormat.MP4, ExportFormat.TXT)
    assert (base.export.mp4_crf, base.export.webp_lossless) == (18, True)
    assert (base.window.fusion, base.window.frame_budget, base.window.mode) == (
        Fusion.FLAT,
        0,
        WindowMode.MOTION_MODULE,
    )
    assert parse_params({"fps": 4}, base=base).export.mp4_crf == 18
    # Out of the box the panel samples in motion-module windows; the engine's own default (and an
    # infotext without a window_mode, as the old extension wrote them) is full-UNet windows.
    defaults = AnimateDiffParams()
    motion_windows = dataclasses.replace(defaults.window, mode=WindowMode.MOTION_MODULE)
    assert settings.base_params(lambda k, d: d) == dataclasses.replace(defaults, window=motion_windows)


def test_settings_register_in_the_animatediff_section():
    added = {}

    class OptionInfo:
        def __init__(self, default, label, component=None, component_args=None, section=None):
            self.default, self.label, self.component, self.args, self.section = (
                default,
                label,
                component,
                component_args,
                section,
            )

        def info(self, text):
            self.help = text
            return self

    shared = SimpleNamespace(OptionInfo=OptionInfo, opts=SimpleNamespace(add_option=added.__setitem__))
    gr = SimpleNamespace(CheckboxGroup="cbg", Slider="slider", Dropdown="dd", Radio="radio", Number="num")
    settings.register(shared, gr)
    assert set(added) >= {
        "animatediff_model_path",
        "animatediff_default_save_formats",
        "animatediff_save_to_custom",
        "animatediff_optimize_gif_palette",
        "animatediff_optimize_gif_gifsicle",
        "animatediff_mp4_crf",
        "animatediff_mp4_preset",
        "animatediff_webp_quality",
        "animatediff_webp_lossless",
        "animatediff_move_to_cpu",
    }
    assert all(o.section == ("animatediff", "AnimateDiff") for o in added.values())
    assert added["animatediff_mp4_crf"].args == {"minimum": 0, "maximum": 51, "step": 1}


def test_model_folder_listing_and_base_filter(tmp_path):
    for name in ("mm_sd15_v3.safetensors", "xl/mm_sdxl_v10_beta.safetensors", "b/hotshot.ckpt", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    names = settings.list_models(str(tmp_path))
    assert names == ["b/hotshot.ckpt", "mm_sd15_v3.safetensors", "xl/mm_sdxl_v10_beta.safetensors"]
    assert settings.models_for_base(names, "sd15") == ["mm_sd15_v3.safetensors"]
    assert settings.models_for_base(names, "sdxl") == ["b/hotshot.ckpt", "xl/mm_sdxl_v10_beta.safetensors"]
    get = lambda key, default: {"animatediff_model_path": str(tmp_path / "b")}.get(key, default)  # noqa: E731
    assert settings.model_dir(get, None, "/ext") == str(tmp_path / "b")
    assert settings.model_dir(get, "/cli", "/ext") == "/cli"
    assert settings.model_dir(lambda k, d: d, None, "/ext") == "/ext/model"


def test_resolve_model_lists_what_is_there(tmp_path):
    resolve_model = settings.resolve_model

    (tmp_path / "v3_sd15_mm.ckpt").write_bytes(b"x")
    assert resolve_model("v3_sd15_mm.ckpt", str(tmp_path), "sd15").endswith("v3_sd15_mm.ckpt")
    assert resolve_model("mm_sd15_v3.safetensors", str(tmp_path), "sd15").endswith("v3_sd15_mm.ckpt")
    with pytest.raises(ValueError, match=r"model = 'nope.ckpt' was not found .* v3_sd15_mm.ckpt"):
        resolve_model("nope.ckpt", str(tmp_path), "sd15")
    with pytest.raises(ValueError, match="not found"):
        resolve_model("../outside.ckpt", str(tmp_path), "sd15")


def test_paste_expansion_for_predecessor_infotext():
    fields = {
        "AnimateDiff": "model: mm_sd_v15_v2.ckpt, video_length: 16, fps: 8, closed_loop: R+P, batch_size: 16, "
        "stride: 1, overlap: -1, interp: Off, interp_x: 10, version: v2.0.1-a"
    }
    ad_args.expand_pasted("", fields)
    assert fields["AnimateDiff enable"] is True and fields["AnimateDiff model"] == "mm_sd_v15_v2.ckpt"
    assert fields["AnimateDiff closed_loop"] == "R+P" and "AnimateDiff version" not in fields
    plain = {"Prompt": "x"}
    ad_args.expand_pasted("", plain)
    assert plain == {"Prompt": "x"}


def test_paste_keys_serve_send_to_and_the_api_infotext_field():
    """The WebUI matches "Send to img2img" fields by name, and the API's ``infotext`` field calls
    callable fields on a dict that the paste callbacks never expanded: a PasteKey serves both."""
    fps, closed_loop = ad_args.PasteKey("fps"), ad_args.PasteKey("closed_loop")
    assert fps == "AnimateDiff fps" and fps in ["Prompt", "AnimateDiff fps"] and callable(fps)
    raw = {"AnimateDiff": "model: a.ckpt, video_length: 12, fps: 6, closed_loop: A, enable: True"}
    assert (fps(raw), closed_loop(raw)) == (6, "A")  # API path: no callback ran
    assert ad_args.PasteKey("enable")(raw) is True
    expanded = dict(raw)
    ad_args.expand_pasted("", expanded)  # UI path: the callback ran first
    assert fps(expanded) == expanded["AnimateDiff fps"] == 6
    assert fps({"Prompt": "no AnimateDiff here"}) is None


def test_paste_skips_only_the_bad_field(caplog):
    fields = {"AnimateDiff": "model: a.ckpt, fps: fast, stride: 2"}
    ad_args.expand_pasted("", fields)
    assert "AnimateDiff fps" not in fields and fields["AnimateDiff stride"] == 2
    assert "fps = 'fast'" in caplog.text


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"is_sd1": True}, "sd15"),
        ({"is_sdxl": True}, "sdxl"),
        ({"is_sd2": True}, "SD2 checkpoints"),
        ({"is_sd3": True}, "SD3 checkpoints"),
    ],
)
def test_host_model_base(flags, expected):
    model = SimpleNamespace(**({"is_sd1": False, "is_sd2": False, "is_sdxl": False, "is_sd3": False} | flags))
    if expected.startswith("SD"):
        with pytest.raises(host_model.UnsupportedModelError, match=expected):
            host_model.base_of(model)
    else:
        assert host_model.base_of(model) == expected


def test_host_model_handles_and_forge_refusal():
    unet = torch.nn.Linear(2, 2).to(torch.float64)
    model = SimpleNamespace(is_sd1=True, model=SimpleNamespace(diffusion_model=unet))
    host = host_model.describe(model)
    assert (host.unet, host.base, host.dtype) == (unet, "sd15", torch.float64)
    devices = SimpleNamespace(dtype_unet=torch.float8_e4m3fn, dtype=torch.float16, device="cpu")
    fp8_host = host_model.current(SimpleNamespace(sd_model=model), devices)
    assert (fp8_host.dtype, fp8_host.storage_dtype) == (torch.float16, torch.float8_e4m3fn)
    devices.dtype_unet = torch.float16
    assert host_model.current(SimpleNamespace(sd_model=model), devices).storage_dtype is None
    devices.fp8 = True  # the WebUI's own flag: its weights are float8, dtype_unet the working dtype
    fp8_host = host_model.current(SimpleNamespace(sd_model=model), devices)
    assert (fp8_host.dtype, fp8_host.storage_dtype) == (torch.float16, torch.float8_e4m3fn)
    with pytest.raises(host_model.UnsupportedModelError, match="Forge"):
        host_model.describe(SimpleNamespace(is_sd1=True, forge_objects=object()))


def test_controlnet_seams(monkeypatch):
    from scripts import animatediff_i2ibatch, animatediff_utils

    shared = types.ModuleType("modules.shared")
    shared.opts = SimpleNamespace(data={})
    monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    sys.modules["modules"].shared = shared
    script = SimpleNamespace(title=lambda: "AnimateDiff", args_from=1, args_to=3)
    p = SimpleNamespace(
        scripts=SimpleNamespace(alwayson_scripts=[script]),
        script_args=(0, {"enable": True, "video_length": 24, "batch_size": 8, "closed_loop": "A"}, None),
    )
    view = animatediff_utils.get_animatediff_arg(p)
    assert (view.enable, view.video_length, view.batch_size, view.closed_loop) == (True, 24, 8, "A")
    view.is_i2i_batch = True  # ControlNet writes on it; the same object comes back
    assert animatediff_utils.get_animatediff_arg(p).is_i2i_batch
    off = SimpleNamespace(scripts=p.scripts, script_args=(0, {"enable": False}, None))
    assert animatediff_utils.get_animatediff_arg(off) is None
    with pytest.raises(ValueError, match="img2img batch input folder 'in' does not exist"):
        animatediff_i2ibatch.animatediff_i2i_batch(p, "in", "out", "", [])
