"""Per-frame UNet layers over bounded chunks of rows, for motion-module-window sampling.

In that mode the UNet sees every frame of the video in one call, so that the motion modules'
temporal attention can run over its context windows. Everything else in the UNet (ResBlocks,
spatial transformers, down/upsampling, convolutions) treats each row on its own, so it can run
over a few rows at a time: the large transient tensors (attention maps above all) then stay
those of a ``layout.spatial_rows``-row batch, whatever the video's length. Only the activations
passed between layers grow with the frames.

Each layer inside the UNet's blocks gets a forward on the instance that splits its input rows,
and every argument with as many rows (the timestep embedding, the text conditioning), into
chunks when ``layout.spatial_rows`` is set, and is a plain call otherwise; the undo puts each
layer's own forward back. Each chunk's output is copied into the layer's one output tensor as
soon as it is computed, so a layer's output is held once (gathering the chunks and concatenating
them would hold it twice at the end of every layer). Per-row inputs a layer reads from elsewhere
(an IP-Adapter's image embedding, kept on the adapter and evaluated in the cross-attention)
cannot be split here: each chunk runs inside ``layout.chunk_inputs(start, stop, rows)``, which
gives them the chunk's rows. Not for a UNet whose GroupNorms normalise across frames (v1,
HotShot): those layers are not per frame. Imports no WebUI module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .frames import FrameLayout

MotionKinds = tuple[type, ...]


def _take(value: Any, start: int, stop: int, rows: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value[start:stop]
    if isinstance(value, list):
        return [_take(item, start, stop, rows) for item in value]
    return value


def _chunked(forward: Callable[..., torch.Tensor], layout: FrameLayout) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        step, rows, around = layout.spatial_rows, x.shape[0], layout.chunk_inputs
        if step <= 0 or rows <= step:
            return forward(x, *args, **kwargs)
        out: torch.Tensor | None = None
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            with around(start, stop, rows) if around is not None else contextlib.nullcontext():
                part = forward(
                    x[start:stop],
                    *(_take(a, start, stop, rows) for a in args),
                    **{k: _take(v, start, stop, rows) for k, v in kwargs.items()},
                )
            if out is None:
                out = part.new_empty((rows, *part.shape[1:]))
            out[start:stop] = part
            del part  # freed before the next chunk runs
        return out

    return run


def chunk_spatial_layers(unet: nn.Module, layout: FrameLayout, skip: MotionKinds) -> Callable[[], None]:
    """Give every layer inside the UNet's blocks (except ``skip`` kinds, the motion blocks) the
    chunked forward; returns the exact undo."""
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    layers = [layer for block in blocks for layer in block.children() if not isinstance(layer, skip)]
    patched: list[tuple[nn.Module, Any]] = []
    for layer in layers:
        patched.append((layer, layer.__dict__.get("forward")))
        layer.forward = _chunked(layer.forward, layout)

    def undo() -> None:
        for layer, own in reversed(patched):
            if own is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = own

    return undo
