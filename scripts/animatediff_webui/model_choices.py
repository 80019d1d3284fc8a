"""The motion-module files the panel offers: those that fit the checkpoint the WebUI has loaded,
or is about to load while its UI is built.

A file's own keys decide where they can be read cheaply (.safetensors headers); otherwise its
name does (``settings.models_for_base``). Loading checks the real layout again and refuses a
mismatch with a message, so this is convenience, never the guard. Changes nothing in the WebUI.
"""

from __future__ import annotations

import functools
import os

from motion_module.peek import file_base

from . import host_model, settings


def for_checkpoint(folder: str) -> list[str]:
    """The files of ``folder`` for the loaded checkpoint (all of them if its base is unknown)."""
    return fitting(folder, settings.list_models(folder), checkpoint_base())


def fitting(folder: str, names: list[str], base: str | None) -> list[str]:
    if base is None:
        return names
    by_name = set(settings.models_for_base(names, base))
    kept = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            stat = os.stat(path)
        except OSError:
            continue
        found = _file_base(path, stat.st_mtime_ns, stat.st_size)
        if found == base or (found is None and name in by_name):
            kept.append(name)
    return kept


@functools.lru_cache(maxsize=256)
def _file_base(path: str, _mtime_ns: int, _size: int) -> str | None:
    return file_base(path)


def checkpoint_base() -> str | None:
    """ "sd15"/"sdxl" of the loaded model; while none is loaded yet (the UI is built while the
    WebUI loads its checkpoint), of the checkpoint it loads, by the key the WebUI itself tells
    SDXL by. Read without ``shared.sd_model``, whose getter would load a checkpoint."""
    try:
        from modules import sd_models
    except ImportError:
        return None
    loaded = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    if loaded is not None:
        try:
            return host_model.base_of(loaded)
        except host_model.UnsupportedModelError:
            return None
    try:
        filename = sd_models.select_checkpoint().filename
    except (AttributeError, OSError):
        return None
    return _checkpoint_file_base(filename)


def _checkpoint_file_base(filename: str) -> str | None:
    if not filename.lower().endswith(".safetensors"):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(filename, framework="pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError):
        return None
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):  # SD1's CLIP (SD2: .model.)
        return "sd15"
    return None
