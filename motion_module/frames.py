"""How the rows of one UNet call split into videos, told to the injected motion blocks.

The WebUI's UNet blocks hand an injected module only ``x`` of shape (b·f, c, h, w): the number of
frames per video block cannot be read from the tensor. The injection creates one ``FrameLayout``
and gives it to every block it inserts; whoever calls the UNet (the windowed denoiser) sets the
frame count for each call. No module-level global is involved.

Owns: ``FrameLayout`` and ``TemporalWindows``. Imports nothing from the WebUI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .motion_strength import MotionStrength
from .params import Fusion
from .window_fusion import run_windows
from .window_schedule import Window

# fn(x, frames) -> y: the temporal computation of one call or window, x of shape (b·f, c, h, w).
TemporalFn = Callable[[torch.Tensor, int], torch.Tensor]
# chunk_inputs(start, stop, rows): held while a per-frame layer runs rows [start, stop) of a call of
# ``rows`` rows; gives inputs read inside the layers (not passed to them) those rows.
ChunkInputs = Callable[[int, int, int], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class TemporalWindows:
    """The context windows of the temporal pass in one UNet call (motion-module window mode).

    The UNet's per-frame layers see every frame; only the motion module is limited to
    ``context`` frames. ``run`` applies any temporal computation window by window, packed into
    calls of at most ``frame_budget`` frames per video, and fuses the overlaps with the
    ``fusion`` weights; a motion site that can cut the windows from its own token sequences
    (``layers.TemporalTransformer3DModel``) takes this object instead and does the same with its
    window-independent work done once per frame. ``between`` runs before each packed call (the
    adapter raises the WebUI's interrupt there).
    """

    windows: tuple[Window, ...]
    fusion: Fusion
    frame_budget: int
    between: Callable[[], None] | None = None

    def run(self, fn: TemporalFn, x: torch.Tensor, frames: int) -> torch.Tensor:
        def call(index: torch.Tensor, length: int) -> torch.Tensor:
            return fn(x.index_select(0, index), length)  # (b·f, c, h, w) -> (b·n·l, c, h, w)

        return run_windows(x, frames, self.windows, self.frame_budget, self.fusion, call, self.between)


# fn(x, frames, windows) -> y: a temporal computation that applies the windows itself.
WindowedFn = Callable[[torch.Tensor, int, TemporalWindows], torch.Tensor]


@dataclass
class FrameLayout:
    """Mutable holder read by injected blocks; set per UNet call by the sampler side.

    ``frames``: frames per video block in the current call; the call holds rows // frames blocks
    (cond block, then uncond block, or just one of them). 0 means "not set", which is an error
    for a motion block: it would silently mix unrelated frames.
    ``temporal_windows``: None runs the motion module over all ``frames`` at once; the
    motion-module window mode sets the windows its temporal pass is limited to.
    ``strength``: how much of each motion layer's residual is added, set per job (``applying``);
    ``using`` leaves it alone, so it holds across every window and step of the job.
    ``spatial_rows``: in motion-module-window mode the UNet sees every frame at once; its per-frame
    (spatial) layers then run over chunks of at most this many rows, so their transient memory
    (attention maps above all) stays that of a ``spatial_rows``-row batch (``spatial_chunks``).
    ``chunk_inputs``: entered around each such chunk, so that per-row inputs the layers read from
    elsewhere than their arguments (an IP-Adapter's per-frame image embedding and its cond
    marks, kept on the adapter) hold the chunk's rows while it runs.
    """

    frames: int = 0
    temporal_windows: TemporalWindows | None = None
    strength: MotionStrength = field(default_factory=MotionStrength)
    spatial_rows: int = 0  # > 0: per-frame layers run over at most this many rows at a time
    chunk_inputs: ChunkInputs | None = None

    def blocks(self, rows: int) -> int:
        """Number of video blocks in a call of ``rows`` rows; raises if the rows do not divide."""
        if self.frames <= 0:
            raise RuntimeError(
                "motion module called without a frame count: the UNet was run outside an "
                "AnimateDiff sampling pass while a motion module was injected"
            )
        if rows % self.frames:
            raise RuntimeError(
                f"UNet call has {rows} rows, which is not a whole number of {self.frames}-frame videos"
            )
        return rows // self.frames

    def run(self, fn: TemporalFn, x: torch.Tensor, windowed: WindowedFn | None = None) -> torch.Tensor:
        """Apply a temporal computation to x (b·f, c, h, w) under the current layout: ``fn`` on
        all frames, or over the windows; ``windowed``, when given, applies the windows itself."""
        self.blocks(x.shape[0])
        if self.temporal_windows is None:
            return fn(x, self.frames)
        if windowed is not None:
            return windowed(x, self.frames, self.temporal_windows)
        return self.temporal_windows.run(fn, x, self.frames)

    @contextlib.contextmanager
    def using(
        self,
        frames: int,
        temporal_windows: TemporalWindows | None = None,
        spatial_rows: int = 0,
        chunk_inputs: ChunkInputs | None = None,
    ) -> Iterator[FrameLayout]:
        """Set the layout for the duration of one UNet call and restore the previous one."""
        saved = (self.frames, self.temporal_windows, self.spatial_rows, self.chunk_inputs)
        self.frames, self.temporal_windows = frames, temporal_windows
        self.spatial_rows, self.chunk_inputs = spatial_rows, chunk_inputs
        try:
            yield self
        finally:
            self.frames, self.temporal_windows, self.spatial_rows, self.chunk_inputs = saved

    @contextlib.contextmanager
    def applying(self, strength: MotionStrength) -> Iterator[FrameLayout]:
        """Use ``strength`` for one job, then put back the exact object that was there before."""
        saved = self.strength
        self.strength = strength
        try:
            yield self
        finally:
            self.strength = saved
