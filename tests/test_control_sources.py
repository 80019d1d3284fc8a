"""ControlNet routing as data: which source each unit takes, the frame count, the batch-input text
(``mask:`` / ``keyframe:`` lines) and the counts it must satisfy."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motion_module.control_batch_input import (
    build_batch_input,
    check_keyframes,
    check_mask_count,
    parse_batch_input,
)
from motion_module.control_sources import Source, UnitInputs, UnitRoute, resolve_frame_count, route_sources

FOLDERS = {"i2i_batch_folder": "/i2i", "video_path": "/frames", "video_source_folder": "/extracted"}

# (img2img batch, video path, video source present) -> the source a unit without input takes
SHARED_WINNER = {
    (False, False, False): (Source.NONE, None),
    (False, False, True): (Source.VIDEO_SOURCE, "/extracted"),
    (False, True, False): (Source.VIDEO_PATH, "/frames"),
    (False, True, True): (Source.VIDEO_PATH, "/frames"),
    (True, False, False): (Source.I2I_BATCH, "/i2i"),
    (True, False, True): (Source.I2I_BATCH, "/i2i"),
    (True, True, False): (Source.I2I_BATCH, "/i2i"),
    (True, True, True): (Source.I2I_BATCH, "/i2i"),
}

# (has_image, has_batch_folder) -> its own source, or None when it takes the shared one
OWN = {
    (False, False): None,
    (True, False): Source.OWN_IMAGE,
    (False, True): Source.OWN_FOLDER,
    (True, True): Source.OWN_FOLDER,  # a batch folder is per frame: it wins over one image
}
PER_FRAME = {Source.OWN_FOLDER, Source.I2I_BATCH, Source.VIDEO_PATH, Source.VIDEO_SOURCE}


@pytest.mark.parametrize("present", list(SHARED_WINNER))
@pytest.mark.parametrize("mask_path", ["", "/masks"])
def test_routing_table(present, mask_path) -> None:
    shared = {key: (value if on else "  ") for (key, value), on in zip(FOLDERS.items(), present, strict=True)}
    units = [
        UnitInputs(enabled, image, folder, mask)
        for enabled, image, folder, mask in itertools.product([True, False], repeat=4)
    ]
    routes = route_sources(units, mask_path=mask_path, **shared)
    assert len(routes) == len(units) == 16
    for unit, route in zip(units, routes, strict=True):
        if not unit.enabled:
            assert route == UnitRoute(Source.DISABLED)  # untouched, whatever it has
            continue
        own = OWN[unit.has_image, unit.has_batch_folder]
        source, folder = (own, None) if own else SHARED_WINNER[present]
        mask = mask_path or None if source in PER_FRAME and not unit.has_mask else None
        assert route == UnitRoute(source, folder, mask), unit


def test_units_are_routed_independently_in_order() -> None:
    units = [
        UnitInputs(True),
        UnitInputs(False),
        UnitInputs(True, has_image=True),
        UnitInputs(True, has_mask=True),
        UnitInputs(True, has_batch_folder=True),
    ]
    routes = route_sources(units, video_path=" /frames ", video_source_folder="/x", mask_path="/m")
    assert routes == [
        UnitRoute(Source.VIDEO_PATH, "/frames", "/m"),
        UnitRoute(Source.DISABLED),
        UnitRoute(Source.OWN_IMAGE),
        UnitRoute(Source.VIDEO_PATH, "/frames", None),
        UnitRoute(Source.OWN_FOLDER, None, "/m"),
    ]
    assert route_sources([]) == []


@pytest.mark.parametrize(
    "requested,counts,expected",
    [
        (0, {}, None),  # no control source: the caller uses the context size
        (20, {}, 20),
        (0, {"video_path": 24, "unit 1": 30}, 24),
        (10, {"video_path": 24, "unit 1": 30}, 10),
        (24, {"video_path": 24, "unit 1": 30}, 24),
        (1, {"video_source": 1}, 1),
    ],
)
def test_frame_count(requested, counts, expected) -> None:
    assert resolve_frame_count(requested, counts) == expected


def test_frame_count_beyond_the_shortest_source_is_refused() -> None:
    with pytest.raises(ValueError) as error:
        resolve_frame_count(25, {"unit 1": 30, "video_path": 24})
    assert str(error.value) == (
        "video_length is 25, but 'video_path' has only 24 images; allowed: 0 (use 24) or 1 to 24"
    )


@pytest.mark.parametrize("requested", [-1, 2.5, True, "8"])
def test_frame_count_must_be_a_whole_number(requested) -> None:
    with pytest.raises(ValueError, match=rf"^video_length is {requested!r}; allowed: 0 \(automatic\)"):
        resolve_frame_count(requested, {})
    with pytest.raises(ValueError, match="'unit 2' has 0 images"):
        resolve_frame_count(0, {"unit 1": 3, "unit 2": 0})


# --- batch-input text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("/frames", ("/frames", None, None)),
        ("", ("", None, None)),
        ("/frames\nmask:/masks", ("/frames", "/masks", None)),
        ("/frames\nkeyframe:0,8,16", ("/frames", None, (0, 8, 16))),
        ("/frames\r\nkeyframe: 0 , 12 \r\nmask:  /my masks \r\n\r\n", ("/frames", "/my masks", (0, 12))),
        ("C:\\clips\\a b\n\nmask:D:\\m", ("C:\\clips\\a b", "D:\\m", None)),
    ],
)
def test_parse_batch_input(text, expected) -> None:
    assert parse_batch_input(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("/f\nkeyframes:0,1", r"^batch_images line 'keyframes:0,1' is not understood; after the folder line"),
        ("/f\n mask:/m", r"line 'mask:/m' is not understood"),  # ControlNet would ignore it silently
        ("/f\nMask:/m", r"line 'Mask:/m' is not understood"),
        ("/f\nmask:/a\nmask:/b", r"line 'mask:/b' is a second line of its kind"),
        ("/f\nkeyframe:0\nkeyframe:1", r"line 'keyframe:1' is a second line of its kind"),
        ("/f\nmask:  ", r"^batch_images line 'mask:' names no folder"),
        ("/f\nkeyframe:", r"^keyframe '' in batch_images line 'keyframe:' is not a frame number"),
        ("/f\nkeyframe:0,-4", r"^keyframe '-4' in batch_images line 'keyframe:0,-4' is not a frame number"),
        ("/f\nkeyframe:0,,3", r"^keyframe ''"),
        ("/f\nkeyframe:1.5", r"^keyframe '1.5'"),
        ("/f\nkeyframe:+3", r"^keyframe '\+3'"),
    ],
)
def test_malformed_batch_input_is_refused(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_batch_input(text)


def test_build_batch_input_writes_controlnet_syntax() -> None:
    assert build_batch_input("/frames") == "/frames"
    assert build_batch_input(" /frames ", " /masks", (0, 8)) == "/frames\nmask:/masks\nkeyframe:0,8"
    assert build_batch_input("/frames", None, [3]) == "/frames\nkeyframe:3"


@pytest.mark.parametrize(
    "args,message",
    [
        (("",), "folder is empty"),
        (("/a\nb",), "folder '/a\\\\nb' contains a line break"),
        (("/a", "/m\r"), "mask folder '/m\\\\r' contains a line break"),
        (("/a", " "), "mask folder is empty"),
        (("/a", None, []), r"keyframe list \[\] is invalid"),
        (("/a", None, [0, -1]), r"keyframe list \[0, -1\] is invalid"),
    ],
)
def test_build_refuses_what_cannot_be_written(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_batch_input(*args)


folder_text = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), min_size=1
).filter(lambda s: s.strip())


@settings(max_examples=200, deadline=None)
@given(
    folder=folder_text,
    mask=st.none() | folder_text,
    keyframes=st.none() | st.lists(st.integers(0, 10_000), min_size=1, max_size=8).map(tuple),
)
def test_build_then_parse_round_trips(folder, mask, keyframes) -> None:
    text = build_batch_input(folder, mask, keyframes)
    assert parse_batch_input(text) == (folder.strip(), mask.strip() if mask else None, keyframes)


def test_keyframes_check() -> None:
    check_keyframes((0, 8, 15), frames=16, image_count=3)
    with pytest.raises(ValueError) as error:
        check_keyframes((0, 16), frames=16, image_count=2)
    assert str(error.value) == "keyframe 16 is outside the video; allowed: 0 to 15 (video_length 16)"
    with pytest.raises(ValueError, match=r"^keyframe 4 comes after keyframe 8; allowed: .* ascending order"):
        check_keyframes((0, 8, 4), frames=16, image_count=3)
    with pytest.raises(ValueError, match=r"^keyframe 8 comes after keyframe 8"):
        check_keyframes((0, 8, 8), frames=16, image_count=3)
    with pytest.raises(ValueError) as error:
        check_keyframes((0, 8), frames=16, image_count=3)
    assert str(error.value) == "2 keyframes for 3 control images; give one keyframe per image"


@pytest.mark.parametrize(
    "masks,images,ok", [(1, 24, True), (24, 24, True), (1, 1, True), (2, 24, False), (48, 24, False)]
)
def test_mask_count(masks, images, ok) -> None:
    if ok:
        check_mask_count(masks, images)
        return
    with pytest.raises(ValueError) as error:
        check_mask_count(masks, images)
    assert str(error.value) == (
        f"mask_path holds {masks} masks for {images} images; allowed: 1 mask for all frames "
        f"or {images} (one per image)"
    )
