"""From one image to SVD frames: load a checkpoint, plan memory, sample, decode.

The adapter (the SVD tab and ``POST /animatediff/v1/svd``) calls only what is defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import SvdCheckpointError
from .params import SvdParams

__all__ = ["SvdCheckpointError"]


class SvdInterrupted(Exception):
    """Raised by ``generate`` when ``should_stop`` said so before the first step finished."""


@dataclass(frozen=True)
class SvdMemory:
    """Memory settings (the WebUI's Settings page): ``offload`` keeps each component on the CPU
    except while it runs (image encoder, then UNet, then decoder); ``ff_chunk`` splits the UNet's
    temporal feed-forward layers into chunks of that many rows (0 = no chunking)."""

    offload: bool = True
    ff_chunk: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """What a job will hold, in bytes, before it runs: weights per component and the largest
    activation estimate; ``describe()`` is the line the tab and the log show."""

    weights: dict[str, int]
    activations: int
    device: str
    offload: bool

    def describe(self) -> str:
        raise NotImplementedError


@dataclass
class SvdModel:
    """The loaded networks (on the CPU until a job moves them) and what the file says of itself."""

    name: str
    default_frames: int  # 14 for SVD, 25 for SVD-XT (from the file name; the weights cannot tell)
    components: dict[str, torch.nn.Module] = field(repr=False)
    dtype: torch.dtype = torch.float32


@dataclass
class SvdResult:
    frames: list[Image.Image]
    seed: int
    steps_done: int
    interrupted: bool = False


def load_svd(path: str | Path, *, dtype: torch.dtype = torch.float32) -> SvdModel:
    """Load ``svd.safetensors`` / ``svd_xt*.safetensors`` (or a ``.ckpt`` through weights-only
    unpickling) strictly; raises ``SvdCheckpointError`` for anything else."""
    raise NotImplementedError


def memory_plan(model: SvdModel, params: SvdParams, memory: SvdMemory, device: torch.device) -> MemoryPlan:
    raise NotImplementedError


def generate(
    model: SvdModel,
    image: Image.Image,
    params: SvdParams,
    *,
    device: torch.device,
    memory: SvdMemory = SvdMemory(),
    on_step: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SvdResult:
    """Sample ``params.frames or model.default_frames`` frames at ``params.width`` x
    ``params.height`` from ``image`` (resized to fit). ``on_step(done, total)`` after each step;
    ``should_stop()`` before each step: when it says so, sampling stops and the last denoised
    estimate is decoded (``interrupted=True``), or ``SvdInterrupted`` if no step finished.
    ``params.seed`` -1 picks a seed, reported in the result."""
    raise NotImplementedError
