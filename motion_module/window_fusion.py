"""How overlapping window predictions become one prediction per frame.

Used by the windowed denoiser (windows.py) and the motion module's temporal pass over windows
(frames.py, layers.py). Every window adds its rows with a per-position weight; the result per
frame is the weighted mean of all windows that held it (never last-window-wins). Windows are
packed into calls of at most a frame budget. Imports no WebUI module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from .params import Fusion
from .window_schedule import Window


def fusion_weights(length: int, fusion: Fusion) -> list[float]:
    """Per-position weights of a window of ``length`` frames.

    Pyramid (1, 2, ..., peak, ..., 2, 1) trusts a window most in its middle, where the motion
    module saw context on both sides; flat weights every position the same.
    """
    if fusion == Fusion.FLAT:
        return [1.0] * length
    if fusion == Fusion.PYRAMID:
        return [float(min(i + 1, length - i)) for i in range(length)]
    raise ValueError(f"fusion is {fusion!r}; allowed: {', '.join(f.value for f in Fusion)}")


class FusionBuffer:
    """Running weighted mean over the frame axis of a (blocks·frames, ...) tensor.

    A running mean (mean += w / (W + w) · (value - mean)) instead of sum-then-divide keeps a value
    that every window agrees on bit-exact, so an identity denoiser returns its input unchanged.
    Accumulates in float32 at least, whatever the model's dtype.
    """

    def __init__(self, like: torch.Tensor, frames: int):
        self.frames = frames
        self.blocks = like.shape[0] // frames
        dtype = torch.promote_types(like.dtype, torch.float32)
        self.mean = torch.zeros(like.shape, dtype=dtype, device=like.device)
        self.weight = torch.zeros(like.shape[0], dtype=dtype, device=like.device)
        self.out_dtype = like.dtype

    def add(self, window: tuple[int, ...], values: torch.Tensor, weights: list[float]) -> None:
        """Fold ``values`` (blocks·len(window), ...) in, block-major, at the window's frames."""
        index = window_rows(window, self.frames, self.blocks, values.device)
        w = torch.tensor(weights, dtype=self.weight.dtype, device=values.device).repeat(self.blocks)
        total = self.weight[index] + w
        share = (w / total).view(-1, *([1] * (values.dim() - 1)))
        current = self.mean[index]
        self.mean[index] = current + share * (values.to(self.mean.dtype) - current)
        self.weight[index] = total

    def result(self) -> torch.Tensor:
        if bool((self.weight == 0).any()):
            missing = sorted({int(r) % self.frames for r in torch.nonzero(self.weight == 0)})
            raise RuntimeError(f"window schedule left frames {missing[:8]} without a prediction")
        return self.mean.to(self.out_dtype)


def window_rows(window: tuple[int, ...], frames: int, blocks: int, device=None) -> torch.Tensor:
    """Row indices of ``window`` in every video block: [b0 f.., b1 f.., ...]."""
    frame_index = torch.tensor(window, dtype=torch.long, device=device)
    offsets = torch.arange(blocks, dtype=torch.long, device=device) * frames
    return (offsets[:, None] + frame_index[None, :]).reshape(-1)  # (blocks, w) -> (blocks·w,)


def frame_weights(windows: Sequence[Window], frames: int, fusion: Fusion) -> torch.Tensor:
    """(frames,) float32: each frame's total weight over ``windows`` (what its mean divides by)."""
    total = torch.zeros(frames)
    for window in windows:
        total[list(window)] += torch.tensor(fusion_weights(len(window), fusion))
    return total


def video_blocks(rows: int, frames: int) -> int:
    """How many whole ``frames``-frame videos ``rows`` rows hold; refuses a remainder."""
    if frames < 1 or rows % frames:
        raise ValueError(
            f"the denoiser got {rows} rows, which is not a whole number of {frames}-frame videos; "
            "AnimateDiff needs the batch size to equal the number of frames and cond/uncond rows "
            "in whole video blocks (prompts with AND are not supported)"
        )
    return rows // frames


def pack_windows(windows: Sequence[Window], budget: int) -> Iterator[list[Window]]:
    """Windows grouped by length, then packed so each call holds at most ``budget`` frames
    (0: one window per call)."""
    for length in dict.fromkeys(len(w) for w in windows):
        group = [w for w in windows if len(w) == length]
        per_call = max(1, budget // length) if budget > 0 else 1
        for start in range(0, len(group), per_call):
            yield group[start : start + per_call]


def run_windows(
    x: torch.Tensor,
    frames: int,
    windows: Sequence[Window],
    budget: int,
    fusion: Fusion,
    call: Callable[[torch.Tensor, int], torch.Tensor],
    between: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``call(row_index, window_len)`` over packed windows of the (blocks·frames, ...) rows
    of ``x`` and fuse its outputs per frame; ``between()`` runs before each call and
    ``progress(k, n)`` hears before the k-th of n calls."""
    blocks = video_blocks(x.shape[0], frames)
    buffer = FusionBuffer(x, frames)
    packs = list(pack_windows(windows, budget))
    for number, pack in enumerate(packs, 1):
        if between is not None:
            between()
        if progress is not None:
            progress(number, len(packs))
        length = len(pack[0])
        # (blocks, windows, length) row indices: each video block keeps its windows together
        index = torch.stack([window_rows(w, frames, blocks, x.device).view(blocks, length) for w in pack], 1)
        out = call(index.reshape(-1), length)
        out = out.view(blocks, len(pack), length, *out.shape[1:])  # (b·n·l, ...) -> (b, n, l, ...)
        weights = fusion_weights(length, fusion)
        for k, window in enumerate(pack):
            buffer.add(window, out[:, k].reshape(blocks * length, *out.shape[3:]), weights)
    return buffer.result()
