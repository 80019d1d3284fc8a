"""The img2img Batch tab as one video: every image of the input folder is one frame.

The WebUI's Batch tab (``modules.img2img.process_batch``) runs one generation per image. With
AnimateDiff on, ``run_as_video`` runs one generation instead, with every image (natural order:
``frame2`` before ``frame10``) as the init image of its frame. It is reached two ways: through
sd-webui-controlnet, which replaces ``process_batch`` and calls
``scripts.animatediff_i2ibatch.animatediff_i2i_batch`` when AnimateDiff is on, and, without
ControlNet, through our own wrapper of ``process_batch`` (``install_hook``, for the extension's
lifetime). The output folder, scaling and PNG-info options act as the WebUI's Batch tab does. An
inpaint mask folder holds one mask for every frame, or one per image (natural order), which
inpaints frame k with mask k (``inpaint_masks``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from motion_module.control_batch_input import check_mask_count
from motion_module.media_paths import list_frame_files, natural_key

from . import controlnet, host_changes, inpaint_masks

log = logging.getLogger("animatediff")

FOLDER_ATTR = controlnet.I2I_FOLDER_ATTR  # the input folder, for ControlNet units
FIELD = "img2img batch input folder"
MASK_FIELD = inpaint_masks.FIELD


def frame_files(source: Any) -> list[str]:
    """The frames: a folder's images, or the uploaded files, in natural order."""
    if isinstance(source, str):
        return list_frame_files(source, FIELD)
    names = [os.path.abspath(getattr(item, "name", item)) for item in source or []]
    if not names:
        raise ValueError(f"AnimateDiff: the {FIELD} holds no images")
    return sorted(names, key=lambda name: natural_key(os.path.basename(name)))


def run_as_video(
    p: Any,
    source: Any,
    output_dir: str,
    inpaint_mask_dir: str,
    args: Any,
    to_scale: bool = False,
    scale_by: float = 1.0,
    use_png_info: bool = False,
    png_info_props: Any = None,
    png_info_dir: Any = None,
) -> Any:
    """One AnimateDiff generation over every image of ``source``; returns its ``Processed``."""
    files = frame_files(source)
    from modules import images, processing, scripts
    from PIL import ImageOps

    frames = [ImageOps.exif_transpose(images.read(name)) for name in files]
    values: dict[str, Any] = {"init_images": frames}
    if to_scale:
        values.update(width=int(frames[0].width * scale_by), height=int(frames[0].height * scale_by))
    if inpaint_mask_dir:
        masks = list_frame_files(inpaint_mask_dir, MASK_FIELD)
        check_mask_count(len(masks), len(files), field=MASK_FIELD)
        read = [images.read(name) for name in masks]
        if len(read) > 1:
            inpaint_masks.refuse_full_res(p, len(read))
            values[inpaint_masks.MASKS_ATTR] = read
        values["image_mask"] = read[0]
    if use_png_info:
        values.update(_png_info(frames[0], files[0], png_info_props, png_info_dir, p))
    if output_dir.strip():
        values["outpath_samples"] = output_dir.strip()
        values["override_settings"] = {**p.override_settings, "save_to_dirs": False}
    if isinstance(source, str):
        values[FOLDER_ATTR] = source
    host_changes.batch_tab_video(p, values)
    log.info("AnimateDiff: img2img Batch tab as one video of %d frames from %s", len(files), FIELD)
    processed = scripts.scripts_img2img.run(p, *args)
    return processed if processed is not None else processing.process_images(p)


def _png_info(image: Any, path: str, props: Any, info_dir: Any, p: Any) -> dict[str, Any]:
    """The Batch tab's "PNG info" option, read from the first frame: prompt additions, seed,
    CFG, sampler and steps among the chosen properties."""
    from modules import images
    from modules.infotext_utils import parse_generation_parameters

    try:
        if info_dir:
            image = images.read(os.path.join(info_dir, os.path.basename(path)))
        text, _ = images.read_info_from_image(image)
        found = {k: v for k, v in parse_generation_parameters(text or "").items() if k in (props or {})}
    except Exception as error:  # the WebUI's own Batch tab ignores unreadable PNG info too
        log.warning("AnimateDiff: PNG info of %s not read (%s)", path, error)
        return {}
    values: dict[str, Any] = {}
    if "Prompt" in found:
        values["prompt"] = f"{p.prompt} {found['Prompt']}"
    if "Negative prompt" in found:
        values["negative_prompt"] = f"{p.negative_prompt} {found['Negative prompt']}"
    for key, attr, kind in (
        ("Seed", "seed", int),
        ("CFG scale", "cfg_scale", float),
        ("Steps", "steps", int),
    ):
        if key in found:
            values[attr] = kind(found[key])
    if "Sampler" in found:
        values["sampler_name"] = found["Sampler"]
    return values


def enabled_for(p: Any) -> bool:
    """AnimateDiff is on in this Batch-tab request (its panel values, X/Y/Z not involved)."""
    from scripts.animatediff_utils import get_animatediff_arg

    view = get_animatediff_arg(p)
    return bool(view is not None and view.enable)


class _BatchTabHook:
    """What sits in ``process_batch``: one video with AnimateDiff on, else the WebUI's loop."""

    def __init__(self, original: Callable[..., Any]):
        self.original = original

    def __call__(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        if enabled_for(p):
            return run_as_video(p, *args, **kwargs)
        return self.original(p, *args, **kwargs)


def install_hook(img2img_module: Any) -> Callable[[], None] | None:
    """Wrap ``process_batch`` so the Batch tab makes one video when AnimateDiff is on; returns
    the undo (None when it is wrapped already)."""
    original = img2img_module.process_batch
    if isinstance(original, _BatchTabHook):
        return None
    return host_changes.batch_tab_hook(img2img_module, _BatchTabHook(original), original)
