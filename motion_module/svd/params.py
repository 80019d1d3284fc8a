"""One SVD request as frozen data, and the parser that builds it from the tab or the API.

Field names are the API's keys (``POST /animatediff/v1/svd``); every refusal names the field, the
value and what is allowed, like the AnimateDiff parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..coercers import Rejected, enum_list, float_in, int_in, text_up_to
from ..params import ExportFormat, ExportParams, ParamsError

DEFAULT_FORMATS = (ExportFormat.GIF, ExportFormat.MP4, ExportFormat.PNG)


@dataclass(frozen=True)
class SvdParams:
    """What to sample. ``frames`` 0 means the model's own count (14 for SVD, 25 for SVD-XT);
    ``decode_chunk`` 0 decodes every frame in one call. ``image`` is the conditioning picture
    (PIL or base64, not compared)."""

    model: str = ""  # checkpoint file name in the SVD model folder
    image: Any = dataclasses.field(default=None, compare=False)
    width: int = 1024
    height: int = 576
    frames: int = 0
    steps: int = 25
    seed: int = -1
    fps: int = 7  # the conditioning value (the model sees fps - 1); also the video's fps
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    decode_chunk: int = 0
    formats: tuple[ExportFormat, ...] = DEFAULT_FORMATS
    loop_number: int = 0
    request_id: str = ""

    def export_params(self) -> ExportParams:
        return ExportParams(formats=self.formats, fps=self.fps, loop_number=self.loop_number)


@dataclass(frozen=True)
class _Field:
    coerce: Callable[[Any], Any]
    allowed: str


def _multiple_of_8(low: int, high: int) -> Callable[[Any], int]:
    inner = int_in(low, high)

    def coerce(value: Any) -> int:
        number = inner(value)
        if number % 8:
            raise Rejected
        return number

    return coerce


def _keep(value: Any) -> Any:
    return value


FIELDS: dict[str, _Field] = {
    "model": _Field(text_up_to(255), "a file name from the SVD model list"),
    "image": _Field(_keep, "an image (base64 PNG/JPEG, optionally a data: URL)"),
    "width": _Field(_multiple_of_8(64, 2048), "a multiple of 8 from 64 to 2048"),
    "height": _Field(_multiple_of_8(64, 2048), "a multiple of 8 from 64 to 2048"),
    "frames": _Field(int_in(0, 128), "0 (the model's own count) or 1 to 128"),
    "steps": _Field(int_in(1, 200), "a whole number from 1 to 200"),
    "seed": _Field(int_in(-1, 2**32 - 1), "-1 (random) or a whole number from 0 to 4294967295"),
    "fps": _Field(int_in(1, 60), "a whole number from 1 to 60"),
    "motion_bucket_id": _Field(int_in(0, 1023), "a whole number from 0 to 1023"),
    "noise_aug_strength": _Field(float_in(0.0, 10.0), "a number from 0 to 10"),
    "min_guidance": _Field(float_in(0.0, 30.0), "a number from 0 to 30"),
    "max_guidance": _Field(float_in(0.0, 30.0), "a number from 0 to 30"),
    "decode_chunk": _Field(int_in(0, 128), "0 (all frames at once) or 1 to 128"),
    "formats": _Field(enum_list(ExportFormat), "a list of GIF, MP4, WEBP, WEBM, PNG, TXT, Frame"),
    "loop_number": _Field(int_in(0, 10000), "a whole number from 0 (forever) to 10000"),
    "request_id": _Field(text_up_to(64), "text of at most 64 characters"),
}
ALIASES = {"format": "formats", "video_length": "frames", "motion_bucket": "motion_bucket_id"}


def parse_svd_params(source: Mapping[str, Any], *, base: SvdParams | None = None) -> SvdParams:
    """Build ``SvdParams`` from a dict keyed like the API; missing keys keep ``base``. Raises
    ``ParamsError`` naming the field, the value and what is allowed."""
    values = dataclasses.asdict(base or SvdParams())
    values["image"] = (base or SvdParams()).image
    for key, raw in source.items():
        key = ALIASES.get(key, key)
        if key not in FIELDS:
            allowed = ", ".join(FIELDS)
            raise ParamsError(f"SVD: unknown argument {key!r}; allowed keys are {allowed}", enable=True)
        try:
            values[key] = FIELDS[key].coerce(raw)
        except Rejected:
            shown = raw if not isinstance(raw, str) or len(raw) < 80 else raw[:77] + "..."
            raise ParamsError(
                f"SVD: {key} = {shown!r} is not allowed; expected {FIELDS[key].allowed}", enable=True
            ) from None
    if values["min_guidance"] > values["max_guidance"]:
        raise ParamsError(
            f"SVD: min_guidance = {values['min_guidance']} is above max_guidance = "
            f"{values['max_guidance']}; expected min_guidance <= max_guidance",
            enable=True,
        )
    values["formats"] = tuple(values["formats"])
    return SvdParams(**values)
