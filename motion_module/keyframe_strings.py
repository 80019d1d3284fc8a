"""Deforum-style keyframe strings (``0:(1.0), 15:(1.05)``) -> one number per video frame.

One parser for every scheduled value: the travel curve and the 2D camera moves (zoom, angle,
translate). Points are ``frame:(value)`` pairs separated by commas; the parentheses may be left
out, points may come in any order, a trailing comma is fine. Values are plain numbers: Deforum's
math expressions (``sin(t)``) are not evaluated, and are refused like any other bad input, with
the character position, so a user can find the mistake in a long string. Between points values
are linear in the frame index; before the first point they hold the first value and past the
last point they keep the last. Imports nothing from the WebUI.
"""

from __future__ import annotations

import math
import re

# A plain decimal number: 1, -0.5, .25, 1e-3 (no expressions, no inf/nan).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_FRAME = re.compile(r"\d+")
_SPACE = re.compile(r"\s*")

Points = tuple[tuple[int, float], ...]  # (frame, value), sorted by frame, frames unique


def parse_keyframes(
    text: str | float,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> Points:
    """Parse ``text`` into sorted (frame, value) points; ValueError names ``field`` and the position.

    ``low``/``high`` bound the values (``low_inclusive=False`` for "must be > low", e.g. zoom).
    A bare number (``"1.05"``, or the float 1.05 from an API payload) is one point at frame 0.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(
            f"{field} must be a keyframe string such as '0:(1.0), 15:(1.05)' or a number; "
            f"got {type(text).__name__} {text!r}"
        )
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError(f"{field} {text!r} is not a finite number; give a number or a keyframe string")
        text = repr(float(text))
    bare = _NUMBER.fullmatch(text.strip())
    scanned = [(0, float(bare.group()), _skip(text, 0))] if bare else _scan(text, field)
    for _, value, pos in scanned:
        too_low = low is not None and (value < low if low_inclusive else value <= low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            _refuse(
                text, field, pos, f"the value {value:g} is outside {_range_text(low, high, low_inclusive)}"
            )
    return tuple(sorted((frame, value) for frame, value, _ in scanned))


def _scan(text: str, field: str) -> list[tuple[int, float, int]]:
    """(frame, value, character index of the value) for each point of ``frame:(value), ...``."""
    points: list[tuple[int, float, int]] = []
    pos = _skip(text, 0)
    if pos == len(text):
        _refuse(text, field, pos, "the string is empty")
    while pos < len(text):
        match = _FRAME.match(text, pos)
        if match is None:
            _refuse(text, field, pos, "expected a frame number (a whole number >= 0)")
        frame, frame_pos = int(match.group()), pos
        if any(frame == seen for seen, _, _ in points):
            _refuse(text, field, frame_pos, f"frame {frame} is given twice")
        pos = _skip(text, match.end())
        if not text.startswith(":", pos):
            _refuse(text, field, pos, f"expected ':' after frame {frame}")
        pos = _skip(text, pos + 1)
        bracketed = text.startswith("(", pos)
        pos = _skip(text, pos + 1) if bracketed else pos
        match = _NUMBER.match(text, pos)
        if match is None:
            _refuse(text, field, pos, "expected a number (expressions such as sin(t) are not supported)")
        points.append((frame, float(match.group()), pos))
        pos = _skip(text, match.end())
        if bracketed:
            if not text.startswith(")", pos):
                _refuse(text, field, pos, "expected ')' after the value")
            pos = _skip(text, pos + 1)
        if pos < len(text):
            if not text.startswith(",", pos):
                _refuse(text, field, pos, "expected ',' between points")
            pos = _skip(text, pos + 1)
    return points


def _skip(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()


def _range_text(low, high, low_inclusive) -> str:
    if low is not None and high is not None:
        return f"{low:g}-{high:g}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low:g}"
    return f"<= {high:g}" if high is not None else "the finite numbers"


def _refuse(text: str, field: str, pos: int, problem: str) -> None:
    near = text[max(0, pos - 10) : pos + 10]
    raise ValueError(
        f"{field} {text!r}: {problem} at character {pos} (0-based, near {near!r}); "
        "allowed: 'frame:(value)' points separated by commas, e.g. '0:(0.0), 50:(1.0), 60:(0.5)', "
        "with whole frame numbers and plain numbers as values"
    )


def values_per_frame(points: Points, frames: int) -> list[float]:
    """One value per frame 0..frames-1: linear between points, held before the first and after
    the last point (a point past the end still shapes the frames before it)."""
    if frames < 1:
        raise ValueError(f"number of frames must be >= 1, got {frames}")
    if not points:
        raise ValueError("a keyframe schedule needs at least one point")
    out = []
    k = 0
    for f in range(frames):
        while k + 1 < len(points) and points[k + 1][0] <= f:
            k += 1
        (f0, v0) = points[k]
        if f <= f0 or k + 1 == len(points):
            out.append(v0)  # before the first point, on a point, or past the last one
            continue
        f1, v1 = points[k + 1]
        out.append(v0 + (v1 - v0) * (f - f0) / (f1 - f0))
    return out


def keyframe_values(
    text: str | float,
    frames: int,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> list[float]:
    """``parse_keyframes`` then ``values_per_frame``: the per-frame schedule a field asks for."""
    points = parse_keyframes(text, field, low=low, high=high, low_inclusive=low_inclusive)
    return values_per_frame(points, frames)
