"""An official SVD single-file checkpoint → its networks, strictly, or a refusal that says why.

The files (``svd.safetensors``, ``svd_xt.safetensors``, ``svd_xt_1_1.safetensors``) hold every
network of Stability's reference model under the sgm prefixes. A file counts as SVD only with all
three kinds of evidence: the UNet's temporal layers (``model.diffusion_model.…time_stack…``), the
temporal VAE decoder's time-mixing layers (``first_stage_model.decoder.…time_mix…``) and the
OpenCLIP image embedder (``conditioner.embedders.0.open_clip.model.visual.…``). Anything else is
refused with what it looks like (an SD1.5/SDXL checkpoint, a motion module, a UNet alone, …).

Each network (a ``Component``) takes the keys under its prefix, prefix stripped; its module reads
its own configuration from the tensor shapes and must take every tensor (strict). The only keys
allowed to stay unused are those a component declares "accepted and ignored" (e.g. the text side
of the OpenCLIP model the reference keeps in the file). ``.ckpt`` files are read only through
weights-only unpickling, so a pickle that needs code to load is refused before anything in it runs.

A ``.safetensors`` file can also be read for its shapes alone (``shapes_only``): the header gives
every key's shape and dtype, and the networks are built and checked on the meta device exactly as
for a load, without reading a weight. That is what the memory plan needs before a job. A ``.ckpt``
has no header: its shapes come only with unpickling all of it.

The file cannot say whether it is SVD (14 frames) or SVD-XT (25): the name decides
(``default_frames_for``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..loading import MotionModuleLoadError, read_state_dict, tensors_only
from . import image_encoder, unet, vae

# The prefixes the evidence looks under (each network's module defines its own).
UNET_PREFIX = unet.PREFIX
DECODER_PREFIX = vae.DECODER_PREFIX
IMAGE_ENCODER_PREFIX = image_encoder.PREFIX
SUFFIXES = (".safetensors", ".ckpt")
SVD_FRAMES, SVD_XT_FRAMES = 14, 25
SHOWN_KEYS = 5
# The dtype names of the safetensors header (its format's specification).
HEADER_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


class SvdCheckpointError(ValueError):
    """A file that is not an SVD single-file checkpoint (the message names the file and says why)."""


@dataclass(frozen=True)
class Component:
    """One network of the checkpoint: the keys under ``prefix`` (stripped) are its state dict.

    ``config_from_state_dict`` reads the configuration from the tensors' shapes and ``build``
    makes the module from it. ``ignored`` lists full-key prefixes this component accepts in the
    file and does not load."""

    name: str
    prefix: str
    config_from_state_dict: Callable[[Mapping[str, torch.Tensor]], Any]
    build: Callable[[Any], nn.Module]
    ignored: tuple[str, ...] = field(default=())


def default_frames_for(name: str) -> int:
    """25 when the file name contains "xt" (``svd_xt.safetensors``, ``svd_xt_1_1.safetensors``),
    else 14: the two models have the same layout, only the frame count they were trained on differs."""
    return SVD_XT_FRAMES if "xt" in Path(name).name.lower() else SVD_FRAMES


# --- reading ---------------------------------------------------------------------------------


class TensorFile:
    """Key names of a checkpoint without reading its tensors (safetensors), and tensors on demand:
    the stored ones (``tensor``) or, for safetensors, empty ones on the meta device with the
    header's shape and dtype (``meta_tensor``)."""

    def __init__(self, path: Path):
        self.path = path
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            raise SvdCheckpointError(
                f"{path.name}: unsupported file type {suffix!r}; an SVD checkpoint is a .safetensors "
                "file (or a .ckpt, read with weights-only unpickling)"
            )
        self._loaded: dict[str, torch.Tensor] | None = None
        self._handle = None
        try:
            if suffix == ".safetensors":
                from safetensors import SafetensorError, safe_open

                try:
                    self._handle = safe_open(str(path), framework="pt", device="cpu")
                except SafetensorError as error:
                    raise MotionModuleLoadError(f"not a readable .safetensors file ({error})") from error
                self.keys = list(self._handle.keys())
            else:
                self._loaded = tensors_only(read_state_dict(path))
                self.keys = list(self._loaded)
        except MotionModuleLoadError as error:
            message = str(error)
            shown = message if message.startswith(path.name) else f"{path.name}: {message}"
            raise SvdCheckpointError(shown) from error
        except OSError as error:
            raise SvdCheckpointError(f"{path.name}: cannot be read ({error})") from error

    def tensor(self, key: str) -> torch.Tensor:
        if self._loaded is not None:
            return self._loaded[key]
        return self._handle.get_tensor(key)

    def meta_tensor(self, key: str) -> torch.Tensor:
        piece = self._handle.get_slice(key)
        name = piece.get_dtype()
        if name not in HEADER_DTYPES:
            raise SvdCheckpointError(
                f"{self.path.name}: tensor {key!r} has dtype {name!r}; expected one of {', '.join(HEADER_DTYPES)}"
            )
        return torch.empty(piece.get_shape(), dtype=HEADER_DTYPES[name], device="meta")


# --- what a file is --------------------------------------------------------------------------


def _any(keys: Iterable[str], prefix: str, *parts: str) -> bool:
    return any(k.startswith(prefix) and (not parts or any(p in k for p in parts)) for k in keys)


def svd_evidence(keys: list[str]) -> dict[str, bool]:
    return {
        "UNet temporal layers": _any(keys, UNET_PREFIX, ".time_stack.", ".time_mixer."),
        "temporal VAE decoder": _any(keys, DECODER_PREFIX, "time_mix", ".time_stack."),
        "OpenCLIP image embedder": _any(keys, IMAGE_ENCODER_PREFIX),
    }


def what_it_looks_like(keys: list[str]) -> str:
    """A short description of a file that is not an SVD checkpoint, from its key names."""
    if not keys:
        return "it holds no tensors"
    if any("motion_modules." in k or k.startswith("motion_modules") for k in keys):
        return "it looks like an AnimateDiff motion module"
    evidence = svd_evidence(keys)
    if evidence["UNet temporal layers"]:
        missing = [name for name, seen in evidence.items() if not seen]
        return f"it looks like a partial SVD file: it has the UNet but no {' and no '.join(missing)}"
    if any(k.startswith("cond_stage_model.") for k in keys) and _any(keys, UNET_PREFIX):
        return "it looks like a Stable Diffusion 1.x/2.x image checkpoint"
    if _any(keys, "conditioner.embedders.") and _any(keys, UNET_PREFIX):
        return "it looks like an SDXL image checkpoint"
    if _any(keys, UNET_PREFIX):
        return "it looks like an image UNet without temporal layers"
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "encoder.down_blocks.")) for k in keys):
        return "it looks like one diffusers-format component; use the single-file checkpoint"
    shown = ", ".join(sorted(keys)[:SHOWN_KEYS])
    return f"none of its {len(keys)} keys belong to an SVD checkpoint (e.g. {shown})"


def check_is_svd(file_name: str, keys: list[str]) -> None:
    if not all(svd_evidence(keys).values()):
        raise SvdCheckpointError(
            f"{file_name} is not a Stable Video Diffusion checkpoint: {what_it_looks_like(keys)}. "
            "Expected the official single file (svd.safetensors, svd_xt.safetensors or "
            "svd_xt_1_1.safetensors)"
        )


# --- splitting and strict loading ------------------------------------------------------------


def _shown(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def split_keys(file_name: str, keys: list[str], components: list[Component]) -> dict[str, list[str]]:
    """Each key to the component with the longest matching prefix; refuses keys nobody takes."""
    by_length = sorted(components, key=lambda c: len(c.prefix), reverse=True)
    ignored = tuple(prefix for c in components for prefix in c.ignored)
    owned: dict[str, list[str]] = {c.name: [] for c in components}
    stray = []
    for key in keys:
        if key.startswith(ignored):
            continue
        owner = next((c for c in by_length if key.startswith(c.prefix)), None)
        if owner is None:
            stray.append(key)
        else:
            owned[owner.name].append(key)
    if stray:
        raise SvdCheckpointError(
            f"{file_name}: {len(stray)} tensors belong to no part of an SVD checkpoint: {_shown(stray)}"
        )
    return owned


def _strict_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = module.state_dict()
    problems = []
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    misshapen = [
        f"{k} (file {tuple(state[k].shape)}, network {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing:
        problems.append(f"{len(missing)} missing: {_shown(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_shown(unexpected)}")
    if misshapen:
        problems.append(f"{len(misshapen)} of the wrong shape: {', '.join(misshapen[:SHOWN_KEYS])}")
    return problems


def _has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def build_component(
    file_name: str,
    component: Component,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
    *,
    shapes_only: bool = False,
) -> nn.Module:
    """Configure from shapes, build without random initialisation, take the tensors strictly.

    The module is built on the meta device and takes the file's tensors (already in ``dtype``) as
    its own. A module that computes buffers the file does not hold is rebuilt on the CPU in
    ``dtype`` and the tensors copied in, unless ``shapes_only`` (``state`` holds meta tensors: the
    module stays on the meta device, with the shapes and dtypes a load would give it)."""
    try:
        config = component.config_from_state_dict(state)
    except (KeyError, ValueError) as error:
        raise SvdCheckpointError(
            f"{file_name}: the {component.name} tensors (under {component.prefix!r}) do not describe a "
            f"network ({error})"
        ) from error
    with torch.device("meta"):
        module = component.build(config)
    problems = _strict_mismatch(module, state)
    if problems:
        raise SvdCheckpointError(
            f"{file_name}: the {component.name} tensors (under {component.prefix!r}) do not fit its "
            f"layout; " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True, assign=True)
    if _has_meta(module) and not shapes_only:
        module = component.build(config).to(dtype)
        module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def load_components(
    path: str | os.PathLike,
    components: list[Component],
    *,
    dtype: torch.dtype = torch.float32,
    shapes_only: bool = False,
) -> dict[str, nn.Module]:
    """Read ``path``, check it is SVD, and build every component from its tensors in ``dtype``.

    ``shapes_only`` (a ``.safetensors`` file): the same checks and modules on the meta device,
    from the header alone; no weight is read."""
    path = Path(path)
    if shapes_only and path.suffix.lower() != ".safetensors":
        raise SvdCheckpointError(
            f"{path.name}: shapes can be read without the weights only from a .safetensors header"
        )
    source = TensorFile(path)
    check_is_svd(path.name, source.keys)
    owned = split_keys(path.name, source.keys, components)
    read = source.meta_tensor if shapes_only else source.tensor
    built = {}
    for component in components:
        start = len(component.prefix)
        state = {key[start:]: _as(read(key), dtype) for key in owned[component.name]}
        built[component.name] = build_component(path.name, component, state, dtype, shapes_only=shapes_only)
    return built


def svd_components() -> list[Component]:
    """The networks of an official SVD file, each under its sgm prefix, in the order a job runs them."""
    return [
        Component(
            "image_encoder",
            image_encoder.PREFIX,
            image_encoder.config_from_state_dict,
            image_encoder.ImageEncoder,
            ignored=image_encoder.IGNORED_KEYS,
        ),
        Component(
            "vae_encoder",
            vae.ENCODER_PREFIX,
            vae.encoder_config_from_state_dict,
            vae.VaeEncoder,
            ignored=vae.IGNORED_PREFIXES,
        ),
        Component("unet", unet.PREFIX, unet.config_from_state_dict, unet.SvdUNet),
        Component("decoder", vae.DECODER_PREFIX, vae.decoder_config_from_state_dict, vae.TemporalDecoder),
    ]
