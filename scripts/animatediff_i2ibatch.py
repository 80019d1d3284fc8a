"""The seam ControlNet calls for the img2img Batch tab with AnimateDiff on (docs/host-interface.md).

ControlNet replaces the WebUI's Batch-tab loop with ``animatediff_i2i_batch(p, ...)`` when it
finds this module. Video-to-video from a folder is not implemented yet, so it stops with a
message that says what to use instead. Contains no Script class.
"""

from __future__ import annotations

from typing import Any


class AnimateDiffBatchNotSupported(RuntimeError):
    status_code = 422


def animatediff_i2i_batch(p: Any, *args: Any, **kwargs: Any) -> None:
    error = AnimateDiffBatchNotSupported(
        "AnimateDiff: the img2img Batch tab (a folder of frames) is not supported yet. Use the img2img "
        "tab with one init image (img2vid), or turn AnimateDiff off for batch processing."
    )
    error.detail = str(error)
    raise error
