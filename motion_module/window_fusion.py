"""How overlapping window predictions become one prediction per frame.

Used by the windowed denoiser and the motion-module window runner (windows.py). Every window adds
its rows with a per-position weight; the result per frame is the weighted mean of all windows
that held it (never last-window-wins). Imports no WebUI module.
"""

from __future__ import annotations

import torch

from .params import Fusion


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
