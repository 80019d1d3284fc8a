"""Which frames each context window holds at a given sampling step.

Called by the windowed denoiser (windows.py) once per step, with parameters the parser has
already validated. Pure Python: the same (frames, step, params) always gives the same windows.

Meanings follow the predecessor extension: window starts rotate by the van-der-Corput value of the
step so seams move, stride adds dilated windows with spacing 1, 2, 4, ..., loop N never wraps across
the end, R-P/R+P wrap, A extends the range by the overlap (one more wrapping window). Differences on
purpose: frames <= context gives one window of exactly the frames (never padded to context), a
window never repeats a frame, identical windows within a step are emitted once, and in loop N a
wrapping window becomes the last + first windows (the predecessor could leave frames uncovered)
and dilated windows are shifted back instead of wrapping.
"""

from __future__ import annotations

from .params import ClosedLoop, WindowParams

Window = tuple[int, ...]


def ordered_halving(step: int) -> float:
    """Van-der-Corput value of ``step`` in [0, 1): 0, 1/2, 1/4, 3/4, 1/8, ...

    Bit-reversing the step spreads consecutive steps' window offsets evenly over the video, so
    the seams between windows never sit on the same frames for long.
    """
    reversed_bits = int(format(step % (1 << 64), "064b")[::-1], 2)
    return reversed_bits / (1 << 64)


def dilation_levels(num_frames: int, context: int, stride: int) -> int:
    """How many spacings (1, 2, 4, ...) are used: a dilated window must fit without repeating."""
    levels = 1
    while levels < stride and context * (1 << levels) <= num_frames:
        levels += 1
    return levels


def schedule(num_frames: int, step: int, params: WindowParams) -> list[Window]:
    """The windows for one sampling step; together they cover every frame at least once."""
    assert num_frames >= 1 and 0 <= params.effective_overlap < params.context, (num_frames, params)
    length, context, overlap = num_frames, params.context, params.effective_overlap
    if length <= context:
        return [tuple(range(length))]

    offset = ordered_halving(step)
    shift = round(length * offset)  # round half to even, like the predecessor
    windows: list[Window] = []
    for level in range(dilation_levels(length, context, params.stride)):
        spacing = 1 << level
        if spacing == 1 and params.closed_loop == ClosedLoop.N:
            windows += _no_wrap_windows(length, context, overlap, shift)
            continue
        first = int(offset * spacing) + shift
        stop = length + shift - (0 if params.closed_loop == ClosedLoop.A else overlap)
        for start in range(first, stop, context * spacing - overlap):
            if params.closed_loop == ClosedLoop.N:  # dilated: shift back so it ends inside
                start %= length
                start = min(start, length - 1 - (context - 1) * spacing)
            windows.append(tuple((start + i * spacing) % length for i in range(context)))
    return list(dict.fromkeys(windows))  # drop repeats, keep first-seen order


def _no_wrap_windows(length: int, context: int, overlap: int, shift: int) -> list[Window]:
    """Spacing-1 windows for loop N: a window that would wrap is replaced by the last and the
    first window of the video, which together hold every frame it held (so coverage stays whole).
    """
    first_ctx = tuple(range(context))
    last_ctx = tuple(range(length - context, length))
    windows: list[Window] = []
    for start in range(shift, length + shift - overlap, context - overlap):
        window = tuple((start + i) % length for i in range(context))
        wraps = any(window[i] < window[i - 1] for i in range(1, context))
        windows += [last_ctx, first_ctx] if wraps else [window]
    return windows
