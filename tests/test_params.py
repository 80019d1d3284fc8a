"""One parser, four doors: API dict, positional list, infotext and XYZ overrides agree; every
predecessor key is accepted; every bad value is refused with the field named."""

from __future__ import annotations

import pytest

from motion_module.params import (
    FIELD_KEYS,
    AnimateDiffParams,
    ClosedLoop,
    ExportFormat,
    FreeInitFilter,
    Interp,
    flatten,
    infotext_value,
    params_from_infotext,
    parse_params,
    read_infotext,
)

# The predecessor's documented API payload (docs/behaviour.md), every key, non-default values.
PREDECESSOR_PAYLOAD = {
    "model": "mm_sd_v15_v2.ckpt",
    "enable": True,
    "video_length": 24,
    "fps": 12,
    "loop_number": 2,
    "closed_loop": "R+P",
    "batch_size": 16,
    "stride": 2,
    "overlap": 4,
    "format": ["GIF", "MP4", "PNG", "TXT", "Frame"],
    "interp": "FILM",
    "interp_x": 5,
    "video_source": None,
    "video_path": "/tmp/frames",
    "mask_path": "/tmp/masks",
    "freeinit_enable": True,
    "freeinit_filter": "gaussian",
    "freeinit_ds": 0.5,
    "freeinit_dt": 0.125,
    "freeinit_iters": 4,
    "latent_power": 1.5,
    "latent_scale": 16,
    "last_frame": None,
    "latent_power_last": 2,
    "latent_scale_last": 24,
    "request_id": "job-7",
}


def test_every_predecessor_key_is_a_field_in_ui_order():
    """Its keys come first, in its order, so its positional lists keep their meaning."""
    assert list(FIELD_KEYS)[: len(PREDECESSOR_PAYLOAD)] == list(PREDECESSOR_PAYLOAD)


def test_api_dict_sets_every_field():
    p = parse_params(PREDECESSOR_PAYLOAD)
    assert (p.enable, p.model, p.video_length, p.frames) == (True, "mm_sd_v15_v2.ckpt", 24, 24)
    assert (p.export.fps, p.export.loop_number, p.export.interp, p.export.interp_x) == (12, 2, Interp.FILM, 5)
    assert p.export.formats == (
        ExportFormat.GIF,
        ExportFormat.MP4,
        ExportFormat.PNG,
        ExportFormat.TXT,
        ExportFormat.FRAME,
    )
    w = p.window
    assert (w.context, w.stride, w.overlap, w.closed_loop) == (16, 2, 4, ClosedLoop.R_PLUS_P)
    assert (p.video_path, p.mask_path, p.video_source, p.request_id) == (
        "/tmp/frames",
        "/tmp/masks",
        "",
        "job-7",
    )
    f = p.freeinit
    assert (f.enable, f.filter, f.ds, f.dt, f.iters) == (True, FreeInitFilter.GAUSSIAN, 0.5, 0.125, 4)
    i = p.img2vid
    assert (i.latent_power, i.latent_scale, i.latent_power_last, i.latent_scale_last) == (1.5, 16, 2, 24)


def test_missing_keys_take_the_predecessors_defaults():
    p = parse_params({"enable": True})
    assert p == AnimateDiffParams(enable=True)
    assert (p.model, p.video_length, p.frames, p.export.fps, p.window.context) == (
        "mm_sd15_v3.safetensors",
        0,
        16,
        8,
        16,
    )
    assert (p.window.overlap, p.window.effective_overlap, p.window.closed_loop) == (
        -1,
        4,
        ClosedLoop.R_MINUS_P,
    )
    assert p.export.formats == (ExportFormat.GIF, ExportFormat.PNG) and p.export.interp_x == 10
    assert parse_params({}) == AnimateDiffParams()


def test_doors_agree_dict_list_infotext_xyz():
    from_dict = parse_params(PREDECESSOR_PAYLOAD)
    from_list = parse_params(list(PREDECESSOR_PAYLOAD.values()))
    # The UI hands over floats from Number fields and strings from radios.
    as_ui = [
        float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for v in PREDECESSOR_PAYLOAD.values()
    ]
    from_ui = parse_params(as_ui)
    text = infotext_value(from_dict, is_img2img=True, mm_hash="abc123", version="1.0")
    from_infotext = params_from_infotext(text, base=parse_params(PREDECESSOR_PAYLOAD | {"enable": False}))
    xyz = {"video_length": "24", "fps": "12", "closed_loop": "R+P", "stride": "2", "interp": "FILM"}
    from_xyz = parse_params(
        PREDECESSOR_PAYLOAD | {"video_length": 8, "fps": 1, "closed_loop": "N", "stride": 1, "interp": "Off"},
        overrides=xyz,
    )
    assert from_dict == from_list == from_ui == from_infotext == from_xyz


def test_positional_list_may_be_short_and_keeps_defaults():
    p = parse_params(["mm.safetensors", True, 32])
    assert (p.model, p.enable, p.video_length, p.export.fps) == ("mm.safetensors", True, 32, 8)


def test_aliases_and_extra_keys():
    p = parse_params({"frames": 12, "context": 8, "formats": "gif, webp", "travel_interpolation": "linear"})
    assert (p.video_length, p.window.context, p.export.formats) == (
        12,
        8,
        (ExportFormat.GIF, ExportFormat.WEBP),
    )
    assert p.travel_interpolation.value == "linear"


def test_base_supplies_settings_only_fields():
    import dataclasses

    base = AnimateDiffParams()
    base = dataclasses.replace(base, export=dataclasses.replace(base.export, mp4_crf=30, gif_palette=True))
    p = parse_params({"fps": 24}, base=base)
    assert (p.export.mp4_crf, p.export.gif_palette, p.export.fps) == (30, True, 24)


BAD_VALUES = [
    ("noise_type", "shuffled", "default, FreeNoise"),
    ("motion_scale", 2.5, "0..2"),
    ("motion_mask", 5, "an image"),
    ("motion_mask_min", -0.1, "0..1"),
    ("window_mode", "views", "unet or motion_module"),
    ("travel_curve", "bounce", "linear, sine, curve or audio"),
    ("travel_curve_args", 7, "sine frequencies"),
    ("color_match", "sometimes", "true or false"),
    ("audio", 5, "an audio file path"),
    ("audio_onsets", "snare", "off, percussive, harmonic or both"),
    ("zoom", True, "a number or keyframes"),
    ("angle", [1], "a number or keyframes"),
    ("translate_x", b"1", "a number or keyframes"),
    ("translate_y", {}, "a number or keyframes"),
    ("camera_border", "wrap", "replicate, reflect or zero"),
    ("enable", "maybe", "true or false"),
    ("video_length", -1, "0..4096"),
    ("video_length", 2.5, "0..4096"),
    ("video_length", "many", "0..4096"),
    ("fps", 0, "1..240"),
    ("fps", True, "1..240"),
    ("loop_number", -2, "≥ 0"),
    ("closed_loop", "X", "N, R-P, R+P, A"),
    ("batch_size", 0, "1..64"),
    ("batch_size", 65, "1..64"),
    ("stride", 0, "1..16"),
    ("overlap", -2, "-1"),
    ("format", [], "GIF, MP4"),
    ("format", ["GIF", "AVI"], "GIF, MP4"),
    ("format", 5, "GIF, MP4"),
    ("interp", "RIFE", "Off or FILM"),
    ("interp_x", 0, "1..100"),
    ("video_source", 3, "video file"),
    ("video_path", ["a"], "folder"),
    ("mask_path", 1.5, "folder"),
    ("freeinit_enable", "sometimes", "true or false"),
    ("freeinit_filter", "median", "butterworth"),
    ("freeinit_ds", 1.5, "0..1"),
    ("freeinit_dt", -0.1, "0..1"),
    ("freeinit_iters", 9, "2..5"),
    ("latent_power", 0, "0.1..10"),
    ("latent_scale", 500, "1..128"),
    ("last_frame", 42, "image"),
    ("latent_power_last", float("nan"), "0.1..10"),
    ("latent_scale_last", 0.5, "1..128"),
    ("request_id", "x" * 300, "256"),
    ("model", 7, "motion-module file"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD_VALUES)
def test_bad_values_are_refused_naming_field_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError) as caught:
        parse_params({key: value})
    message = str(caught.value)
    assert f"{key} = " in message and allowed in message
    assert repr(value)[:20] in message


def test_every_field_has_a_bad_value_case():
    assert set(FIELD_KEYS) <= {key for key, _value, _allowed in BAD_VALUES}


def test_cross_field_overlap_must_be_below_context():
    with pytest.raises(ValueError, match=r"overlap = 8 .* context batch size 8"):
        parse_params({"batch_size": 8, "overlap": 8})
    assert parse_params({"batch_size": 8, "overlap": 7}).window.overlap == 7


def test_unknown_key_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown argument 'video_lenght'.*video_length"):
        parse_params({"video_lenght": 16})
    with pytest.raises(ValueError, match="at most 41"):
        parse_params([None] * 42)
    with pytest.raises(ValueError, match="dict keyed by"):
        parse_params(42)  # type: ignore[arg-type]


def test_infotext_round_trip_with_every_written_field():
    p = parse_params(PREDECESSOR_PAYLOAD | {"model": "sub/dir/mm v3.safetensors", "request_id": "r1"})
    text = infotext_value(p, is_img2img=True, mm_hash="deadbeef", version="0.1.0")
    fields = read_infotext(text)
    assert fields["mm_hash"] == "deadbeef" and fields["enable"] == "True"
    assert fields["format"] == "GIF/MP4/PNG/TXT/Frame"
    back = params_from_infotext(text)
    # infotext does not record the API-only and ControlNet inputs, nor FreeInit's details
    for key in (
        "model",
        "enable",
        "video_length",
        "fps",
        "loop_number",
        "closed_loop",
        "batch_size",
        "stride",
    ):
        assert flatten(back)[key] == flatten(p)[key], key
    assert (back.export.formats, back.export.interp, back.img2vid, back.request_id) == (
        p.export.formats,
        p.export.interp,
        p.img2vid,
        "r1",
    )


def test_txt2img_infotext_omits_img2vid_fields():
    text = infotext_value(AnimateDiffParams(enable=True))
    assert "latent_power" not in text and "request_id" not in text
    assert text.startswith("model: mm_sd15_v3.safetensors, video_length: 0, fps: 8")
    assert text.endswith("enable: True, format: GIF/PNG")


def test_predecessor_infotext_parses_and_turns_the_panel_on():
    # As the predecessor wrote it (docs/behaviour.md): no enable, no format, a version tag, img2img fields.
    old = (
        "model: mm_sd15_v3.safetensors, video_length: 16, fps: 8, loop_number: 0, closed_loop: R-P, "
        "batch_size: 16, stride: 1, overlap: -1, interp: Off, interp_x: 10, freeinit_enable: False, "
        "mm_hash: 3f6d2a1b, latent_power: 1, latent_scale: 32, latent_power_last: 1, "
        "latent_scale_last: 32, version: v2.0.1-a"
    )
    p = params_from_infotext(old)
    assert p.enable and p.frames == 16 and p.window.closed_loop is ClosedLoop.R_MINUS_P
    assert p.export.formats == AnimateDiffParams().export.formats


def test_bad_infotext_value_names_the_field():
    with pytest.raises(ValueError, match="closed_loop = 'Q'"):
        params_from_infotext("model: a, closed_loop: Q")


def test_the_window_mode_is_in_every_infotext_and_an_old_one_means_full_unet_windows():
    from motion_module.params import WindowMode
    from scripts.animatediff_webui import args as ad_args

    text = infotext_value(parse_params({"window_mode": "motion_module"}))
    assert "window_mode: motion_module" in text
    assert parse_params(read_infotext(text), ignore_unknown=True).window.mode is WindowMode.MOTION_MODULE
    old = "model: mm_sd_v15_v2.ckpt, video_length: 16, fps: 8, closed_loop: R-P, batch_size: 16"
    assert ad_args.pasted_values({"AnimateDiff": old})["window_mode"] == "unet"
