"""Names sd-webui-controlnet imports from us to build a SparseCtrl model.

ControlNet calls ``MotionWrapper("", "", MotionModuleType.SparseCtrl)``, loads the checkpoint's
motion-module keys into it strictly and appends ``down_blocks[i].motion_modules[j]`` to its hint
network. Those sites take the frame count from the AnimateDiff job running now: the job puts its
frame layout into ``current_layout`` for its duration (``host_changes.sparsectrl_layout``).
Contains no Script class, so the WebUI registers nothing from this file.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from motion_module.frames import FrameLayout
from motion_module.sparsectrl import SD15_WIDTHS, SparseCtrlMotion

# The running job's layout (None between jobs); written only by host_changes.sparsectrl_layout.
current_layout: list[FrameLayout] = []


class MotionModuleType(Enum):
    SparseCtrl = "SparseCtrl"


def _layout() -> FrameLayout | None:
    return current_layout[-1] if current_layout else None


class MotionWrapper(SparseCtrlMotion):
    """SparseCtrl's motion modules (the only kind ControlNet asks us for)."""

    widths = SD15_WIDTHS

    def __init__(self, mm_name: str = "", mm_hash: str = "", mm_type: Any = MotionModuleType.SparseCtrl):
        if getattr(mm_type, "value", mm_type) != MotionModuleType.SparseCtrl.value:
            raise ValueError(
                f"AnimateDiff: MotionWrapper builds SparseCtrl motion modules only, not {mm_type!r}"
            )
        super().__init__(_layout, type(self).widths)
