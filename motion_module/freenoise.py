"""Noise rescheduling for videos longer than the context (FreeNoise).

With independent noise per frame, every context window of a long video starts from unrelated
noise and drifts to unrelated content. FreeNoise makes each later block of ``context`` frames a
shuffled copy of the block one context earlier: every window then starts from the same set of
noise frames, only reordered, which keeps the content of distant windows alike while the order
still lets motion differ. Applied once to the starting noise, before sampling.

Layout: one video as (f, c, h, w), frames first (the WebUI's latent batch). Imports no WebUI
module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .params import NoiseType

__all__ = ["NoiseType", "repeat_context", "reschedule_noise", "shuffle_context"]


def _generator(seed: torch.Generator | int) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, int) and not isinstance(seed, bool):
        return torch.Generator().manual_seed(seed)
    raise TypeError(f"expected a torch.Generator or an int seed, got {type(seed).__name__}")


def _check(noise: torch.Tensor, context: int) -> None:
    if noise.dim() != 4:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected one video as (frames, c, h, w)")
    if not (isinstance(context, int) and not isinstance(context, bool) and context >= 1):
        raise ValueError(f"context (Context batch size) is {context!r}; it must be a whole number >= 1")


def _blocks(frames: int, context: int) -> list[tuple[int, int]]:
    """(start, length) of every block after the first: [context, 2·context), …, a last partial one."""
    return [(start, min(context, frames - start)) for start in range(context, frames, context)]


def shuffle_context(noise: torch.Tensor, context: int, seed: torch.Generator | int) -> torch.Tensor:
    """A new tensor whose block [k·context, (k+1)·context) is the block one context earlier with
    its frames permuted (one ``torch.randperm(context)`` per block, drawn in block order from
    ``seed``); a last partial block of n frames takes the first n entries of its permutation.

    Every block is therefore a reordering of frames 0..context−1. Same seed, same result; with
    frames ≤ context the values are unchanged. The input is never modified.
    """
    _check(noise, context)
    generator = _generator(seed)
    out = noise.clone()
    for start, length in _blocks(noise.shape[0], context):
        order = torch.randperm(context, generator=generator, device=generator.device)[:length]
        out[start : start + length] = out[start - context : start].index_select(0, order.to(noise.device))
    return out


def repeat_context(
    noise: torch.Tensor, context: int, seed: torch.Generator | int | None = None
) -> torch.Tensor:
    """A new tensor in which every later block repeats frames 0..context−1 in order (``seed`` unused)."""
    _check(noise, context)
    out = noise.clone()
    for start, length in _blocks(noise.shape[0], context):
        out[start : start + length] = noise[:length]
    return out


def _default(noise: torch.Tensor, context: int, seed: torch.Generator | int | None = None) -> torch.Tensor:
    _check(noise, context)
    return noise.clone()


Reschedule = Callable[[torch.Tensor, int, torch.Generator | int], torch.Tensor]
RESCHEDULES: dict[NoiseType, Reschedule] = {
    NoiseType.DEFAULT: _default,
    NoiseType.FREENOISE: shuffle_context,
    NoiseType.REPEATED_CONTEXT: repeat_context,
}


def reschedule_noise(
    noise: torch.Tensor, noise_type: NoiseType | str, context: int, seed: torch.Generator | int
) -> torch.Tensor:
    """The starting noise for ``noise_type`` as a new tensor; ``noise`` (f, c, h, w) is left as is.

    ``seed`` drives the permutations (a Generator, or an int such as the first frame's seed, so
    the same infotext gives the same video).
    """
    try:
        kind = NoiseType(noise_type)
    except ValueError:
        allowed = ", ".join(t.value for t in NoiseType)
        raise ValueError(f"noise_type is {noise_type!r}; allowed: {allowed}") from None
    return RESCHEDULES[kind](noise, context, seed)
