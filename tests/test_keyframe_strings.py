"""Deforum-style keyframe strings: points come back exactly, frames between are linear, frames
outside the points hold, and every refusal names the field and the character position."""

from __future__ import annotations

import pytest

from motion_module.keyframe_strings import keyframe_values, parse_keyframes, values_per_frame


def test_points_are_reproduced_and_linear_between():
    values = keyframe_values("0:(0.0), 50:(1.0), 60:(0.5)", 70, "travel_curve_args")
    assert len(values) == 70
    assert (values[0], values[50], values[60]) == (0.0, 1.0, 0.5)
    assert values[25] == pytest.approx(0.5)
    assert values[55] == pytest.approx(0.75)
    assert values[61:] == [0.5] * 9  # past the last point: its value


def test_frames_before_the_first_point_hold_its_value():
    assert keyframe_values("4:(2), 8:(4)", 10, "zoom") == [2, 2, 2, 2, 2, 2.5, 3, 3.5, 4, 4]


def test_lenient_forms():
    assert parse_keyframes(" 15:1.05 ,0:( 1 ),", "zoom") == ((0, 1.0), (15, 1.05))
    assert parse_keyframes("0:(-.5e1)", "angle") == ((0, -5.0),)
    assert parse_keyframes("1.05", "zoom") == parse_keyframes(1.05, "zoom") == ((0, 1.05),)
    assert parse_keyframes(3, "translate_x") == ((0, 3.0),)


def test_a_point_past_the_end_still_shapes_the_frames_before_it():
    assert keyframe_values("0:(0), 20:(1)", 5, "travel_curve_args") == pytest.approx(
        [0, 0.05, 0.1, 0.15, 0.2]
    )


@pytest.mark.parametrize(
    "text, position, problem",
    [
        ("", 0, "empty"),
        ("  ", 2, "empty"),
        ("0:(0), x:(1)", 7, "frame number"),
        ("0 (1)", 2, "':'"),
        ("0:(1), 5:(sin(t))", 10, "expected a number"),
        ("0:(1), 5:()", 10, "expected a number"),
        ("0:(1", 4, "')'"),
        ("0:(1) 5:(2)", 6, "','"),
        ("0:(0), 10:(1), 0:(0.5)", 15, "frame 0 is given twice"),
        ("0:(0), 10:(1.5)", 11, "outside 0-1"),
        ("0:(-0.1)", 3, "outside 0-1"),
        ("-1:(0)", 0, "frame number"),
        ("1.5:(0)", 1, "':'"),
    ],
)
def test_bad_strings_are_refused_with_the_position(text, position, problem):
    with pytest.raises(ValueError) as caught:
        parse_keyframes(text, "travel_curve_args", low=0.0, high=1.0)
    message = str(caught.value)
    assert message.startswith(f"travel_curve_args {text!r}")
    assert f"at character {position} " in message
    assert problem in message
    assert "'frame:(value)'" in message  # what is allowed


def test_exclusive_lower_bound_and_non_finite_values():
    with pytest.raises(ValueError, match=r"zoom '0:\(1\), 5:\(0\)'.*outside > 0 at character 10"):
        parse_keyframes("0:(1), 5:(0)", "zoom", low=0.0, low_inclusive=False)
    with pytest.raises(ValueError, match="angle must be a keyframe string"):
        parse_keyframes(None, "angle")
    with pytest.raises(ValueError, match="angle inf is not a finite number"):
        parse_keyframes(float("inf"), "angle")
    with pytest.raises(ValueError, match="the value inf is outside the finite numbers at character 3"):
        parse_keyframes("0:(1e999)", "angle")


def test_values_per_frame_needs_frames_and_points():
    with pytest.raises(ValueError):
        values_per_frame(((0, 1.0),), 0)
    with pytest.raises(ValueError):
        values_per_frame((), 4)
