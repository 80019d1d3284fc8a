"""How prompt travel moves between two keyframes: the per-frame travel weight ``t`` by curve kind.

``linear`` is the predecessor's travel (t grows evenly from one keyframe to the next). ``sine``
eases: t = Σ sin²(π·f·s) over the frequencies f, scaled so its largest value on [0, 1] is 1,
where s is the linear position in the segment; f = 1 goes to the next prompt and back, f = 0.5
eases in and out. ``curve`` takes t straight from a keyframe string over the whole video's frame
index (``0:(0.0), 50:(1.0)``), so one curve shapes every segment. ``audio`` moves faster where the
music is loud: t is the audio energy summed from the segment's first frame, over the segment's
total, so each segment still starts at its keyframe and arrives at the next one.

The result is what ``prompt_travel.interpolate_frames(..., fractions=...)`` consumes; segments and
wrap-around come from ``prompt_travel.frame_fractions``, so the curves change only the weight.
Imports nothing from the WebUI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .keyframe_strings import keyframe_values
from .prompt_travel import TravelCurve, frame_fractions

TRAVEL_CURVES = ("linear", "sine", "curve", "audio")
AUDIO_REDUCTIONS = ("mean", "max", "median")  # how mel bins become one energy per frame
SINE_GRID = 4096  # steps on [0, 1] over which the sine sum's maximum is found
Fractions = list[tuple[int, int, float]]


def travel_fractions(
    kind: str,
    args: str | float | Sequence[float] | None,
    frames: int,
    keyframes: Sequence[int],
    wrap: bool = False,
    energy: Sequence[float] | np.ndarray | None = None,
) -> Fractions:
    """Per frame ``(i, j, t)`` for ``interpolate_frames``: interp(key i, key j, t).

    ``kind`` (API ``travel_curve``) is one of ``TRAVEL_CURVES``. ``args`` (``travel_curve_args``):
    sine frequencies (``"1"``, ``"1, 2"`` or numbers; empty = 1), a keyframe string with values
    0-1 for ``curve``, the mel-bin reduction for ``audio`` (checked here, used by
    ``audio_analysis.mel_energy``), ignored for ``linear``. ``energy``: one value >= 0 per video
    frame, required for ``audio``. ``linear`` returns exactly ``frame_fractions``.
    """
    return frame_fractions(frames, keyframes, wrap, travel_curve(kind, args, frames, energy))


def travel_curve(
    kind: str,
    args: str | float | Sequence[float] | None,
    frames: int,
    energy: Sequence[float] | np.ndarray | None = None,
) -> TravelCurve | None:
    """The weight function for ``frame_fractions``; None for ``linear`` (its own default)."""
    kind = check_kind(kind)
    if kind == "sine":
        return sine_curve(sine_frequencies(args))
    if kind == "curve":
        values = keyframe_values(_curve_text(args), frames, "travel_curve_args", low=0.0, high=1.0)
        return lambda frame, since, length: values[frame]
    if kind == "audio":
        audio_reduction(args)
        return energy_curve(energy, frames)
    return None


def check_kind(kind: str) -> str:
    if kind not in TRAVEL_CURVES:
        raise ValueError(f"travel_curve {kind!r} is not a travel curve; allowed: {', '.join(TRAVEL_CURVES)}")
    return kind


# ---------------------------------------------------------------------------------------------
# sine


def sine_frequencies(args: str | float | Sequence[float] | None) -> tuple[float, ...]:
    """Frequencies from ``"1"``, ``"0.5, 2"``, 1, [1, 2] or nothing (= 1); each must be > 0."""
    if args is None or (isinstance(args, str) and not args.strip()):
        return (1.0,)
    if isinstance(args, str):
        parts = [p.strip() for p in args.split(",") if p.strip()]
    elif isinstance(args, int | float) and not isinstance(args, bool):
        parts = [args]
    elif isinstance(args, Sequence):
        parts = list(args)
    else:
        parts = [args]
    try:
        freqs = tuple(float(p) for p in parts if not isinstance(p, bool))
    except (TypeError, ValueError):
        freqs = ()
    if len(freqs) != len(parts) or not freqs or not all(math.isfinite(f) and f > 0 for f in freqs):
        raise ValueError(
            f"travel_curve_args {args!r} is not a list of sine frequencies; allowed: numbers > 0 "
            "separated by commas, e.g. '1' (there and back) or '0.5' (ease in and out) or '1, 3'"
        )
    return freqs


def sine_curve(freqs: Sequence[float]) -> TravelCurve:
    peak = _sine_peak(tuple(freqs))
    return lambda frame, since, length: min(1.0, float(_sine_sum(since / length, freqs)) / peak)


def sine_weight(s: float, freqs: Sequence[float]) -> float:
    """Σ sin²(π·f·s) over ``freqs`` at segment position s in [0, 1], divided by its maximum on [0, 1]."""
    return min(1.0, float(_sine_sum(s, freqs)) / _sine_peak(tuple(freqs)))


def _sine_sum(s, freqs: Sequence[float]):
    return sum(np.sin(np.pi * f * np.asarray(s, np.float64)) ** 2 for f in freqs)


def _sine_peak(freqs: tuple[float, ...]) -> float:
    return float(np.max(_sine_sum(np.linspace(0.0, 1.0, SINE_GRID + 1), freqs)))


# ---------------------------------------------------------------------------------------------
# curve


def _curve_text(args) -> str | float:
    if args is None or (isinstance(args, str) and not args.strip()):
        raise ValueError(
            "travel_curve_args is empty; the 'curve' travel needs a keyframe string with values 0-1, "
            "e.g. '0:(0.0), 50:(1.0), 60:(0.5)'"
        )
    return args


# ---------------------------------------------------------------------------------------------
# audio


def audio_reduction(args: str | None) -> str:
    """The mel-bin reduction named by ``travel_curve_args`` for the audio curve (empty = mean)."""
    name = "mean" if args is None or (isinstance(args, str) and not args.strip()) else args
    if not isinstance(name, str) or name.strip().lower() not in AUDIO_REDUCTIONS:
        raise ValueError(
            f"travel_curve_args {args!r} is not a reduction for the audio curve; allowed: "
            f"{', '.join(AUDIO_REDUCTIONS)} or empty (mean)"
        )
    return name.strip().lower()


def energy_curve(energy: Sequence[float] | np.ndarray | None, frames: int) -> TravelCurve:
    """Travel weight from audio energy: the share of the segment's energy already played.

    Frame k_i + m of the segment k_i -> k_j gets Σ e[k_i .. k_i+m-1] / Σ e[k_i .. k_j-1] (indices
    modulo the frame count when the segment wraps), so t is 0 at the first keyframe, 1 at the
    next, and grows fastest over loud frames. A silent segment travels linearly.
    """
    if energy is None:
        raise ValueError(
            "travel_curve 'audio' needs audio: give an audio file (audio) so its energy can drive the travel"
        )
    e = np.asarray(energy, np.float64).reshape(-1)
    if len(e) != frames or not np.all(np.isfinite(e)) or np.any(e < 0):
        raise ValueError(
            f"audio energy must be {frames} finite values >= 0 (one per frame); got {len(e)} values"
        )

    def curve(frame: int, since: int, length: int) -> float:
        start = frame - since
        played = e[np.arange(start, start + since) % frames].sum()
        total = e[np.arange(start, start + length) % frames].sum()
        return float(played / total) if total > 0 else since / length

    return curve
