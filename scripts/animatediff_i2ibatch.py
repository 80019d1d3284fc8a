"""The name sd-webui-controlnet calls for the img2img Batch tab with AnimateDiff on.

ControlNet replaces the WebUI's Batch-tab loop and, when ``get_animatediff_arg(p)`` says
AnimateDiff is on, calls ``animatediff_i2i_batch`` with the arguments of the WebUI's
``modules.img2img.process_batch`` instead: the whole folder becomes one video
(``animatediff_webui.i2i_batch``). Contains no Script class.
"""

from __future__ import annotations

from typing import Any


def animatediff_i2i_batch(p: Any, *args: Any, **kwargs: Any) -> Any:
    from scripts.animatediff_webui import i2i_batch

    return i2i_batch.run_as_video(p, *args, **kwargs)
