"""The four doors into ``motion_module.params.parse_params``: UI list, API, infotext, XYZ axes.

The WebUI hands every hook our slice of ``p.script_args``: the UI's values in ``FIELDS`` order,
or, from the API, the same list with a dict (the predecessor's form) in its first slot. XYZ axes
leave overrides on ``p`` (see xyz.py). Pasted infotext is read per UI component.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from motion_module.params import (
    FIELD_KEYS,
    INFOTEXT_KEY,
    AnimateDiffParams,
    coerce_field,
    conditional_defaults,
    parse_params,
    read_infotext,
)

log = logging.getLogger("animatediff")

XYZ_ATTR = "animatediff_xyz"  # dict of {field key: raw value} left on p by XYZ axes
SCRIPT_TITLE = "AnimateDiff"


def from_script_args(
    args: Sequence[Any], *, base: AnimateDiffParams, overrides: Mapping[str, Any] | None = None
) -> AnimateDiffParams:
    """Our slice of script_args -> params. A dict (or the predecessor's params object) in the
    first slot is the API's keyed form and stands for the whole request; otherwise positional."""
    args = list(args)
    first = args[0] if args else None
    if isinstance(first, Mapping):
        return parse_params(first, base=base, overrides=overrides)
    if first is not None and hasattr(first, "enable") and hasattr(first, "video_length"):
        keyed = {k: v for k, v in vars(first).items() if k in FIELD_KEYS}
        return parse_params(keyed, base=base, overrides=overrides)
    return parse_params(args, base=base, overrides=overrides)


def for_job(p: Any, args: Sequence[Any], base: AnimateDiffParams) -> AnimateDiffParams:
    """Params for one processing object, XYZ overrides applied."""
    return from_script_args(args, base=base, overrides=getattr(p, XYZ_ATTR, None))


def script_args_of(p: Any) -> list[Any] | None:
    """Our slice of ``p.script_args`` found through ``p.scripts`` (for callers outside a hook)."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        if (script.title() or "").lower() == SCRIPT_TITLE.lower():
            return list(p.script_args[script.args_from : script.args_to])
    return None


def ui_value(value: Any) -> Any:
    """A typed field value as the UI component holds it (enum -> text, formats -> list)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [ui_value(item) for item in value]
    return value


PASTE_PREFIX = "AnimateDiff "  # infotext_fields names: "AnimateDiff video_length", ...


def pasted_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``AnimateDiff`` infotext entry as {field key: UI value}; bad fields are left out.

    Pasting an AnimateDiff infotext turns the panel on, also for the predecessor's infotexts that
    never recorded ``enable``.
    """
    text = fields.get(INFOTEXT_KEY)
    if not isinstance(text, str) or not text:
        return {}
    raw = {"enable": "True"} | conditional_defaults() | read_infotext(text)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELD_KEYS:
            continue
        try:
            values[key] = ui_value(coerce_field(key, value))
        except ValueError as error:
            log.warning("pasted infotext: %s (field left unchanged)", error)
    return values


class PasteKey(str):
    """The name of one pasted field ("AnimateDiff fps") that the WebUI can also call.

    "Send to img2img" copies the fields whose name is in ``paste_field_names`` (string equality),
    but the API's ``infotext`` request field parses the infotext without running the
    on_infotext_pasted callbacks, so it finds a script's values only through a callable field.
    This key is both: as a string it is the field's name, called it reads the value from the raw
    ``AnimateDiff`` entry when the callback has not expanded it.
    """

    field: str

    def __new__(cls, field_key: str) -> PasteKey:
        key = super().__new__(cls, PASTE_PREFIX + field_key)
        key.field = field_key
        return key

    def __call__(self, fields: Mapping[str, Any]) -> Any:
        if self in fields:
            return fields[self]
        return pasted_values(fields).get(self.field)


def expand_pasted(_infotext: str, fields: dict[str, Any]) -> None:
    """on_infotext_pasted: split ``AnimateDiff: "model: …, fps: 8, …"`` into one entry per
    component ("AnimateDiff fps": 8), which ``infotext_fields`` and "Send to img2img" bind to."""
    for key, value in pasted_values(fields).items():
        fields[PASTE_PREFIX + key] = value


def as_image(value: Any, field: str = "last_frame") -> Any:
    """The last frame as a PIL image: UI image, numpy array, gradio dict, or base64 (API)."""
    if value is None:
        return None
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("image") or value.get("name")
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        if os.path.isfile(text):
            return Image.open(text).convert("RGB")
        try:
            return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
        except Exception as error:
            raise ValueError(
                f"AnimateDiff: {field} is not a readable image or base64 image ({error})"
            ) from None
    if hasattr(value, "shape"):
        return Image.fromarray(value)
    return value
