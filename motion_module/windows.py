"""The windowed denoise wrapper: any number of frames through a motion module that sees ``context``.

``WindowedDenoiser`` wraps an inner-model callable ``inner(x, sigma, **cond)`` whose rows are whole
videos, [cond f0..fN-1 | uncond f0..fN-1] or one block only. Each step it asks window_schedule for
the windows, slices every per-frame input to them, runs the UNet on several windows per call
(within a frame budget) and fuses the overlaps by weight (window_fusion). In motion-module mode the
UNet sees all frames once and only the motion module's temporal pass runs in windows: the call's
``TemporalWindows`` go on the frame layout, and each motion layer cuts them from its own tokens.
Called from the adapter's denoiser seam; imports no WebUI module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .frames import FrameLayout, TemporalWindows
from .params import WindowMode, WindowParams
from .window_fusion import fusion_weights, run_windows, video_blocks
from .window_schedule import Window, ordered_halving, schedule

__all__ = [
    "PerFrameInputs",
    "WindowedDenoiser",
    "Window",
    "fusion_weights",
    "ordered_halving",
    "schedule",
    "slice_rows",
]

Inner = Callable[..., torch.Tensor]


def slice_rows(value: Any, index: torch.Tensor, rows: int) -> Any:
    """Take ``index`` rows of every tensor in ``value`` whose first axis has ``rows`` rows.

    Walks dicts (SDXL's {"crossattn", "vector", "c_concat"}), lists (ldm's {"c_crossattn": [t]})
    and tuples; other tensors (shared across rows) and non-tensors pass through untouched.
    """
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == rows:
            return value.index_select(0, index.to(value.device))
        return value
    if isinstance(value, dict):
        sliced = {key: slice_rows(item, index, rows) for key, item in value.items()}
        if type(value) is dict:
            return sliced
        try:  # keep dict subclasses (the WebUI's DictWithShape) when they can be rebuilt
            return type(value)(sliced)
        except TypeError:
            return sliced
    if isinstance(value, list):
        return [slice_rows(item, index, rows) for item in value]
    if isinstance(value, tuple):
        return tuple(slice_rows(item, index, rows) for item in value)
    return value


@dataclass(frozen=True)
class _Entry:
    name: str
    get: Callable[[], Any]
    set: Callable[[Any], None]
    per_call: bool
    per_chunk: bool


class PerFrameInputs:
    """Per-frame inputs that do not travel through the inner call's arguments (ControlNet hints).

    Each entry is read with ``get`` and written with ``set``; around every windowed UNet call the
    wrapper writes the window's rows and afterwards writes the full tensor back. A tensor with as
    many rows as the call is indexed row by row; one holding a different whole number of
    ``frames``-row blocks (e.g. a single block shared by cond and uncond) by row modulo its length.

    Entries read inside per-frame layers (``per_chunk``) also get the rows of each chunk when
    motion-module mode runs those layers over chunks of the call's rows (``chunk``); an entry that
    only exists during the call (``per_call`` False) is sliced per chunk only. ``resets`` run
    whenever the inputs change (before and after every call and chunk): state derived from them
    that would otherwise outlive them is dropped.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._resets: list[Callable[[], None]] = []

    def add(
        self,
        name: str,
        get: Callable[[], Any],
        set: Callable[[Any], None],  # noqa: A002
        *,
        per_call: bool = True,
        per_chunk: bool = False,
    ) -> None:
        self._entries.append(_Entry(name, get, set, per_call, per_chunk))

    def add_reset(self, reset: Callable[[], None]) -> None:
        self._resets.append(reset)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def read_in_layers(self) -> bool:
        """Whether any entry must follow the chunks of per-frame layers."""
        return any(entry.per_chunk for entry in self._entries)

    def sliced(
        self, index: torch.Tensor | None, rows: int, frames: int, device: torch.device | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """For one UNet call: each input's rows of ``index`` (None: every row), moved to
        ``device`` (the UNet's, where the call runs). Only that part is moved: the full inputs
        may be kept on the CPU, and a long video's hints then never sit on the device whole."""
        return self._sliced([e for e in self._entries if e.per_call], index, rows, frames, device)

    def chunk(
        self, start: int, stop: int, rows: int, frames: int, device: torch.device | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """For one chunk of a call's rows, [start, stop) of ``rows``, while a per-frame layer runs
        it: the inputs read inside the layers hold those rows."""
        index = torch.arange(start, stop)
        return self._sliced([e for e in self._entries if e.per_chunk], index, rows, frames, device)

    @contextlib.contextmanager
    def _sliced(
        self,
        entries: list[_Entry],
        index: torch.Tensor | None,
        rows: int,
        frames: int,
        device: torch.device | None,
    ) -> Iterator[None]:
        restore: list[tuple[Callable[[Any], None], Any]] = []
        try:
            self._reset()
            for entry in entries:
                full = entry.get()
                if full is None:
                    continue
                part = full if index is None else _take(entry.name, full, index, rows, frames)
                if device is not None:
                    part = part.to(device)
                if part is full:
                    continue
                restore.append((entry.set, full))
                entry.set(part)
            yield
        finally:
            for set_, full in reversed(restore):
                set_(full)
            self._reset()

    def _reset(self) -> None:
        for reset in self._resets:
            reset()


def _take(name: str, full: Any, index: torch.Tensor, rows: int, frames: int) -> Any:
    if not isinstance(full, torch.Tensor):
        raise TypeError(f"per-frame input {name!r} is a {type(full).__name__}; expected a tensor")
    count = full.shape[0]
    if count == rows:
        return full.index_select(0, index.to(full.device))
    if count % frames == 0:
        return full.index_select(0, (index % count).to(full.device))
    raise ValueError(
        f"per-frame input {name!r} has {count} rows; expected {rows} (one per UNet row) or a "
        f"multiple of the {frames} frames"
    )


class WindowedDenoiser:
    """Callable with the inner model's signature that runs it over context windows.

    ``step`` returns the sampler's step counter (the schedule shifts with it); ``between`` runs
    before each windowed UNet call (the adapter raises the WebUI's interrupt there) and
    ``progress(k, n)`` says which of the step's n calls starts (the adapter shows it). ``calls`` and
    ``frame_evals`` count UNet calls and frames evaluated per block, for tests and benchmarks.
    """

    def __init__(
        self,
        inner: Inner,
        params: WindowParams,
        layout: FrameLayout,
        frames: int,
        step: Callable[[], int] = lambda: 0,
        per_frame: PerFrameInputs | None = None,
        between: Callable[[], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        assert frames >= 1, frames
        self.inner, self.params, self.layout, self.frames = inner, params, layout, frames
        self.step, self.per_frame, self.between = step, per_frame or PerFrameInputs(), between
        self.progress = progress
        self.calls = 0
        self.frame_evals = 0

    def __call__(self, x: torch.Tensor, sigma: Any, **cond: Any) -> torch.Tensor:
        frames = self.frames
        rows = x.shape[0]
        video_blocks(rows, frames)
        windows = schedule(frames, int(self.step()), self.params)
        if len(windows) == 1 and windows[0] == tuple(range(frames)):
            return self._count(self._run_all(x, sigma, cond, None), frames)
        if self.params.mode == WindowMode.MOTION_MODULE:
            temporal = TemporalWindows(
                tuple(windows), self.params.fusion, self.params.frame_budget, self.between
            )
            return self._count(self._run_all(x, sigma, cond, temporal), frames)

        def call(index: torch.Tensor, length: int) -> torch.Tensor:
            x_in, sigma_in, cond_in = slice_rows((x, sigma, cond), index, rows)
            with self.per_frame.sliced(index, rows, frames, x.device), self.layout.using(length):
                out = self.inner(x_in, sigma_in, **cond_in)
            self._count(out, index.numel() * frames // rows)
            return out

        params = self.params
        return run_windows(
            x, frames, windows, params.frame_budget, params.fusion, call, self.between, self.progress
        )

    def _run_all(
        self, x: torch.Tensor, sigma: Any, cond: dict, temporal: TemporalWindows | None
    ) -> torch.Tensor:
        rows = self.params.frame_budget if temporal is not None else 0  # motion-module windows: bounded
        chunk_inputs = None
        if rows > 0 and self.per_frame.read_in_layers:

            def chunk_inputs(start: int, stop: int, total: int) -> contextlib.AbstractContextManager[None]:
                return self.per_frame.chunk(start, stop, total, self.frames, x.device)

        with self.per_frame.sliced(None, x.shape[0], self.frames, x.device):
            with self.layout.using(self.frames, temporal, spatial_rows=rows, chunk_inputs=chunk_inputs):
                return self.inner(x, sigma, **cond)

    def _count(self, out: torch.Tensor, frame_evals: int) -> torch.Tensor:
        self.calls += 1
        self.frame_evals += frame_evals
        return out
