"""Per-frame UNet layers over chunks of rows (motion_module/spatial_chunks.py): the same output
as one call, a bounded chunk per call, and each chunk's output released before the next runs."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from motion_module.frames import FrameLayout
from motion_module.spatial_chunks import chunk_spatial_layers


class RowScale(nn.Module):
    """A per-row layer that records the rows it saw and keeps weak references to its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []
        self.outputs: list[weakref.ref] = []
        self.alive_at_call: list[int] = []

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        self.alive_at_call.append(sum(ref() is not None for ref in self.outputs))
        self.seen.append(x.shape[0])
        out = x * 2 + emb[:, :, None, None]
        self.outputs.append(weakref.ref(out))
        return out


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(RowScale())])
        self.middle_block = nn.Sequential()
        self.output_blocks = nn.ModuleList()


def test_chunks_give_the_unchunked_output_and_hold_one_chunk_at_a_time() -> None:
    unet, layout = TinyUNet(), FrameLayout()
    layer = unet.input_blocks[0][0]
    gen = torch.Generator().manual_seed(0)
    x, emb = torch.randn(10, 3, 2, 2, generator=gen), torch.randn(10, 3, generator=gen)
    expected = layer(x, emb)
    layer.seen.clear(), layer.outputs.clear(), layer.alive_at_call.clear()
    undo = chunk_spatial_layers(unet, layout, ())
    try:
        layout.spatial_rows = 4
        out = layer(x, emb)
    finally:
        undo()
    assert torch.equal(out, expected)  # copies of the same per-row arithmetic: bit-exact
    assert layer.seen == [4, 4, 2]
    assert layer.alive_at_call == [0, 0, 0]  # an earlier chunk's output is gone when the next runs
    assert "forward" not in layer.__dict__  # the undo put the class's forward back
