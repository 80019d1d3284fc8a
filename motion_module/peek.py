"""Which base model (SD1.5 or SDXL) a motion-module file is for, from its key names alone.

Reading a .safetensors file's header costs microseconds, so the WebUI's model list can be filtered
by what the files are rather than by what their names say. Pickled files would have to be read
whole, so they get no answer here (None) and callers fall back to the name. Imports no WebUI module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

# A down-level site in any key style: AnimateDiff, diffusers (no temporal_transformer), HotShot.
_DOWN_SITE = re.compile(r"(?:^|\.)down_blocks\.(\d+)\.(?:motion_modules|temporal_attentions)\.")
_BASE_BY_LEVELS = {4: "sd15", 3: "sdxl"}


def base_from_keys(keys: Iterable[str]) -> str | None:
    """ "sd15" for 4 down levels, "sdxl" for 3, None when the keys have no motion sites."""
    levels = {int(m.group(1)) for m in map(_DOWN_SITE.search, keys) if m}
    return _BASE_BY_LEVELS.get(max(levels) + 1) if levels else None


def file_base(path: str | os.PathLike) -> str | None:
    """The base of a .safetensors motion module from its header; None for other files, files
    that cannot be read, and files without motion sites (LoRAs, adapters)."""
    if not str(path).lower().endswith(".safetensors"):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return base_from_keys(f.keys())
    except (OSError, SafetensorError):
        return None
