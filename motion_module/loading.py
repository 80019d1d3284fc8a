"""Motion-module file → detected family → strictly loaded ``MotionModule`` on a device and dtype.

Pickled files (.ckpt/.pt/.pth) are read only with weights-only unpickling: a file that needs code
execution is refused and nothing in it runs. The loaded module is kept by ``MotionModuleCache``
while the same file stays selected. Owns: ``load_motion_module``, ``LoadedMotionModule``,
``MotionModuleCache``, ``file_hash``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .detect import Detection, MotionModuleFormatError, detect
from .layers import Linear
from .model import MotionModule
from .spec import MotionModuleSpec

log = logging.getLogger("animatediff")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HASH_LENGTH = 10


class MotionModuleLoadError(RuntimeError):
    """The file cannot be read, or its tensors do not fit the module its keys describe."""


@dataclass(frozen=True)
class LoadedMotionModule:
    model: MotionModule
    spec: MotionModuleSpec
    hash: str  # first HASH_LENGTH hex digits of the file's SHA-256, for the infotext
    path: str
    variant: str  # e.g. "mm_sd_v15", "AnimateDiff v3"


def file_hash(path: str | os.PathLike, length: int = HASH_LENGTH) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Raw mapping from a .safetensors file, or a weights-only unpickled .ckpt/.pt/.pth/.bin."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise MotionModuleLoadError(
                f"{path.name} is not a readable .safetensors file ({error})"
            ) from error
    if suffix in PICKLE_SUFFIXES:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise MotionModuleLoadError(
                f"{path.name} is a pickle that needs code execution to load, so it was refused "
                f"(nothing in it ran). Use a .safetensors version of this model. Detail: {str(error).splitlines()[0]}"
            ) from error
        # A truncated or foreign file: the unpickler trips on junk in many ways.
        except (RuntimeError, EOFError, IndexError, KeyError, TypeError, ValueError) as error:
            raise MotionModuleLoadError(
                f"{path.name} is not a readable checkpoint ({type(error).__name__}: {error})"
            ) from error
    raise MotionModuleLoadError(
        f"{path.name}: unsupported file type {suffix!r}; use .safetensors, .ckpt, .pt or .pth"
    )


def tensors_only(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap a training checkpoint's ``state_dict`` and drop non-tensor entries."""
    if isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise MotionModuleLoadError(f"file holds a {type(raw).__name__}, not a mapping of tensors")
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def check_strict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Keys and shapes must match exactly; report what is missing, unexpected or misshapen by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshapen = [
        f"{k}: file {tuple(sd[k].shape)}, module {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
            if items:
                shown = ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {title}: {shown}")
        raise MotionModuleLoadError("motion module tensors do not fit its layout; " + "; ".join(parts))


def build_module(
    found: Detection, device: torch.device | str, dtype: torch.dtype, storage_dtype=None
) -> MotionModule:
    """Build on the meta device (no random init), take the file's tensors, then move and cast."""
    model = MotionModule.from_spec(found.plan, found.spec, device="meta")
    check_strict(model, found.state_dict)
    model.load_state_dict(found.state_dict, strict=True, assign=True)
    model.reset_positional_tables()  # tables absent from the file were left on meta
    model.to(device=device, dtype=dtype)
    if storage_dtype is not None:
        for layer in model.modules():
            if isinstance(layer, Linear):
                layer.weight.data = layer.weight.data.to(storage_dtype)
    return model.eval().requires_grad_(False)


def load_motion_module(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    name_hint: str | None = None,
    storage_dtype: torch.dtype | None = None,
) -> LoadedMotionModule:
    """Read, detect, build and strictly load a motion-module file.

    ``dtype`` is the working dtype of every parameter; ``storage_dtype`` (e.g. torch.float8_e4m3fn)
    optionally stores the Linear weights smaller, and they are cast to the activations' dtype when
    used. ``name_hint`` overrides the file name for family hints (v1 vs v3 without PE, Lightning).
    """
    path = Path(path)
    try:
        found = detect(tensors_only(read_state_dict(path)), name_hint or path.name)
    except MotionModuleFormatError as error:
        raise MotionModuleFormatError(f"{path.name}: {error}") from error
    try:
        model = build_module(found, device, dtype, storage_dtype)
    except MotionModuleLoadError as error:
        raise MotionModuleLoadError(f"{path.name}: {error}") from error
    digest = file_hash(path)
    stored = f", Linear weights stored in {storage_dtype}" if storage_dtype is not None else ""
    log.info(
        "loaded motion module %s [%s] as %s (%s)%s",
        path.name,
        digest,
        found.spec.label,
        found.variant,
        stored,
    )
    return LoadedMotionModule(model, found.spec, digest, str(path), found.variant)


class MotionModuleCache:
    """Keeps one loaded module while the same file (path, mtime, size), device and dtype stay selected."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._loaded: LoadedMotionModule | None = None

    def get(
        self,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        name_hint: str | None = None,
        storage_dtype: torch.dtype | None = None,
    ) -> LoadedMotionModule:
        stat = os.stat(path)
        key = (
            os.path.realpath(path),
            stat.st_mtime_ns,
            stat.st_size,
            str(torch.device(device)),
            dtype,
            storage_dtype,
            name_hint,
        )
        if key != self._key or self._loaded is None:
            self.clear()
            self._loaded = load_motion_module(path, device, dtype, name_hint, storage_dtype)
            self._key = key
        return self._loaded

    @property
    def current(self) -> LoadedMotionModule | None:
        return self._loaded

    def clear(self) -> None:
        self._key, self._loaded = None, None
