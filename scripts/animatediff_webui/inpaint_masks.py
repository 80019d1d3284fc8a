"""Per-frame inpaint masks on the img2img Batch tab: frame k inpainted with mask k.

The WebUI's ``StableDiffusionProcessingImg2Img.init`` builds everything an inpaint job needs from
one ``image_mask``: the latent masks ``p.mask``/``p.nmask`` (``(C, h, w)``, broadcast over the
batch) the sampler blends with at every step and after the last, the masked-content fill of the
init image before it is VAE-encoded, the inpainting model's ``image_conditioning``, and for the
paste-back after decoding one ``mask_for_overlay`` and an ``overlay_images`` entry per init image
(the init image with the masked part cut out, composited over the decoded frame).

With one mask per frame, ``init_per_frame`` runs the WebUI's own ``init`` once per frame with
that frame's init image, mask and seed and a batch of one, exactly as for a single image with its
mask, and joins the results frame by frame: ``mask``/``nmask`` become ``(F, C, h, w)`` (the
WebUI's blends broadcast over rows, so each frame blends with its own mask), ``init_latent`` and
``image_conditioning`` are concatenated, ``overlay_images`` and ``color_corrections`` hold one
entry per frame. ``mask_for_overlay`` stays one attribute in the WebUI; each frame's is handed to
its image in the ``postprocess_maskoverlay`` hook (``overlay_mask``).

"Inpaint area: Only masked" (``inpaint_full_res``) crops every frame to its own mask's box and
pastes back at one ``paste_to`` for all images; frames sampled at different crops are no video,
so that combination is refused (``refuse_full_res``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import host_changes
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

MASKS_ATTR = "animatediff_inpaint_masks"  # the Batch tab's per-frame masks, on its request's p
FIELD = "img2img batch inpaint mask folder"
FULL_RES = "inpaint_full_res"


def refuse_full_res(p: Any, mask_count: int) -> None:
    """Per-frame masks with "Only masked" are refused naming the option (see the module doc)."""
    if getattr(p, FULL_RES, False):
        raise ValueError(
            f"AnimateDiff: the {FIELD} holds {mask_count} masks (one per frame), which works only "
            f"with Inpaint area 'Whole picture'; 'Only masked' ({FULL_RES}=True) would crop every "
            "frame to its own mask's box. Pick 'Whole picture', or give one mask for every frame"
        )


def frame_masks(p: Any, frames: int) -> list[Any] | None:
    """The per-frame masks the Batch tab left on ``p``, cut to the video's ``frames`` (the tab
    checked they are one per input image); None when it left one mask or none."""
    masks = getattr(p, MASKS_ATTR, None)
    if not masks or len(masks) < 2:
        return None
    if len(masks) < frames:
        raise ValueError(f"AnimateDiff: the {FIELD} holds {len(masks)} masks for {frames} frames")
    refuse_full_res(p, len(masks))
    return list(masks[:frames])


InitFn = Callable[[Any, list, list, list], None]


def init_per_frame(
    p: Any,
    session: PatchSession,
    base_init: InitFn,
    masks: Sequence[Any],
    all_prompts: list,
    all_seeds: list,
    all_subseeds: list,
) -> list[Any]:
    """Run ``base_init`` (the WebUI's ``init``) once per frame and join the results on ``p``.
    Returns each frame's ``mask_for_overlay``."""
    images = list(p.init_images)
    if len(images) != len(masks):
        raise ValueError(f"AnimateDiff: {len(images)} init images for {len(masks)} inpaint masks")
    refuse_full_res(p, len(masks))
    parts: list[dict[str, Any]] = []
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        one = {"init_images": [image], "image_mask": mask, "batch_size": 1, "color_corrections": None}
        with host_changes.one_frame_init(p, one):
            base_init(p, all_prompts[k : k + 1], all_seeds[k : k + 1], all_subseeds[k : k + 1])
            parts.append(_frame_result(p, k))
    values: dict[str, Any] = {
        "init_latent": torch.cat([part["init_latent"] for part in parts]),
        "mask": torch.stack([part["mask"] for part in parts]),
        "nmask": torch.stack([part["nmask"] for part in parts]),
        "image_conditioning": torch.cat([part["image_conditioning"] for part in parts]),
        "overlay_images": [part["overlay"] for part in parts],
        "mask_for_overlay": parts[0]["mask_for_overlay"],
    }
    corrections = [part["color_correction"] for part in parts]
    if all(c is not None for c in corrections):
        values["color_corrections"] = corrections
    host_changes.per_frame_inpaint(session, p, values)
    log.info("AnimateDiff: %d inpaint masks, one per frame", len(parts))
    return [part["mask_for_overlay"] for part in parts]


def _frame_result(p: Any, k: int) -> dict[str, Any]:
    """What the WebUI's ``init`` made for frame ``k`` (one image, one mask, batch of one)."""
    mask, overlays = getattr(p, "mask", None), getattr(p, "overlay_images", None)
    if mask is None or not overlays:
        raise RuntimeError(f"AnimateDiff: the WebUI's img2img init made no inpaint mask for frame {k}")
    corrections = getattr(p, "color_corrections", None)
    return {
        "init_latent": p.init_latent[:1],
        "mask": mask,
        "nmask": p.nmask,
        "image_conditioning": p.image_conditioning[:1],
        "overlay": overlays[0],
        "mask_for_overlay": p.mask_for_overlay,
        "color_correction": corrections[0] if corrections else None,
    }


def overlay_mask(masks: Sequence[Any] | None, args: Any) -> None:
    """The ``postprocess_maskoverlay`` hook's image gets its own frame's overlay mask."""
    index = getattr(args, "index", None)
    if masks and isinstance(index, int) and 0 <= index < len(masks):
        host_changes.frame_overlay_mask(args, masks[index])
