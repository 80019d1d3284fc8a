"""Per-frame inpaint masks (img2img Batch tab): frame k is inpainted with mask k.

A whole img2img job runs on the recording fakes of ``test_host_changes`` with a processing object
whose ``init`` does what the WebUI's img2img ``init`` does with one ``image_mask`` (latent masks
``(C, h, w)`` broadcast over the batch, one overlay per init image, one image repeated over the
batch). The job's ``init`` runs it once per frame; sampling must then see each frame's own mask
row, start latent and overlay, in frame order, and each image its own overlay mask; every write
of the extension is catalogued and the ones not made for the WebUI's results are undone.
"""

# ruff: noqa: F811  (tests take the imported fixtures as parameters)
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_host_changes import (  # noqa: F401  (the harness's fixtures, used by name)
    FRAMES,
    HOOK_ERRORS,
    WRITES,
    FakeP,
    catalogued,
    hook,
    request,
    unet,
    webui,
    written,
)

from scripts.animatediff_webui import inpaint_masks, lifecycle

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 32  # pixels; latents are SIZE // 8


def frame_image(k: int) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (10 * k + 5, 100, 200))


def half_mask(k: int) -> Image.Image:
    """White (inpaint) on the left half for even frames, on the right half for odd ones."""
    array = np.zeros((SIZE, SIZE), np.uint8)
    if k % 2 == 0:
        array[:, : SIZE // 2] = 255
    else:
        array[:, SIZE // 2 :] = 255
    return Image.fromarray(array, "L")


def latent_of(mask: Image.Image) -> torch.Tensor:
    """1 where the mask inpaints, at latent size (as the WebUI resizes it)."""
    small = np.asarray(mask.resize((SIZE // 8, SIZE // 8)), np.float32) / 255
    return torch.from_numpy(np.around(small))


class FakeImg2Img(FakeP):
    """The WebUI's img2img ``init`` for one ``image_mask`` and its ``sample``, reduced to what
    the masks touch. Its own writes bypass the recorder (they are the WebUI's, not ours)."""

    def __init__(self, outdir, masks):
        super().__init__(outdir)
        vars(self).update(
            init_images=[frame_image(k) for k in range(FRAMES)],
            image_mask=masks[0],
            inpaint_full_res=False,
            color_corrections=None,
            init_calls=[],
            sampled=[],
        )
        if len(masks) > 1:
            vars(self)[inpaint_masks.MASKS_ATTR] = masks

    def init(self, all_prompts, all_seeds, all_subseeds):
        latmask = latent_of(self.image_mask)
        cut = Image.fromarray(255 - np.asarray(self.image_mask.convert("L")))
        overlays, latents = [], []
        for image in self.init_images:
            overlay = image.convert("RGBA")
            overlay.putalpha(cut)
            overlays.append(overlay)
            latents.append(torch.full((4, SIZE // 8, SIZE // 8), float(image.getpixel((0, 0))[0])))
        if len(latents) == 1:
            latents, overlays = latents * self.batch_size, overlays * self.batch_size
        vars(self).update(
            init_latent=torch.stack(latents),
            mask=(1 - latmask).expand(4, -1, -1).clone(),
            nmask=latmask.expand(4, -1, -1).clone(),
            mask_for_overlay=self.image_mask,
            overlay_images=overlays,
            image_conditioning=torch.zeros(len(latents), 5, 1, 1),
        )
        self.init_calls.append((len(self.init_images), self.batch_size, list(all_seeds)))

    def sample(self, *args, **kwargs):
        self.sampled.append((self.mask.clone(), self.nmask.clone(), self.init_latent.clone()))
        return "samples"


def run_job(p):
    """before_process (job starts), the WebUI's ``p.init``, ``p.sample``, the mask-overlay hook
    for every image, postprocess and ``p.close``."""
    hook(lifecycle.before_process, p, request(), True)
    seeds = [1000 + k for k in range(FRAMES)]
    p.init(["a cat"] * FRAMES, seeds, seeds)
    p.sample()
    overlays = []
    for i in range(FRAMES):
        args = SimpleNamespace(
            index=i, mask_for_overlay=p.mask_for_overlay, overlay_image=p.overlay_images[i]
        )
        hook(lifecycle.postprocess_maskoverlay, p, args)
        overlays.append((args.mask_for_overlay, p.overlay_images[i]))
    hook(lifecycle.postprocess, p, SimpleNamespace(images=[], infotexts=[], comments=""))
    p.close()
    return overlays


def test_each_frame_samples_and_pastes_back_with_its_own_mask(webui):
    masks = [half_mask(k) for k in range(FRAMES)]
    p = FakeImg2Img(webui.outdir, masks)
    WRITES.clear()
    overlays = run_job(p)
    assert HOOK_ERRORS == []
    # the WebUI's init ran once per frame: one image, a batch of one, that frame's seed
    assert p.init_calls == [(1, 1, [1000 + k]) for k in range(FRAMES)]
    ((mask, nmask, init_latent),) = p.sampled
    assert mask.shape == nmask.shape == (FRAMES, 4, SIZE // 8, SIZE // 8)
    for k in range(FRAMES):
        assert torch.equal(nmask[k], latent_of(masks[k]).expand(4, -1, -1)), f"frame {k}: not its own mask"
        assert torch.equal(mask[k], 1 - nmask[k])
        assert init_latent[k].eq(10 * k + 5).all(), f"frame {k}: start latent of another frame"
    assert not torch.equal(nmask[0], nmask[1])  # left and right halves alternate
    for k, (overlay_mask, overlay) in enumerate(overlays):
        assert overlay_mask is masks[k], f"image {k} returned with another frame's mask"
        alpha = np.asarray(overlay.getchannel("A"))
        assert overlay.getpixel((0, 0))[0] == 10 * k + 5  # frame k's own pixels are pasted back
        assert np.array_equal(alpha == 0, np.asarray(masks[k]) == 255), f"overlay {k}: not cut by mask {k}"
    uncatalogued = sorted({written(label, attr) for label, attr in WRITES if not catalogued(label, attr)})
    assert uncatalogued == []
    # the one-frame settings were put back after every init; the batch is the video's again
    assert len(p.init_images) == FRAMES and p.image_mask is masks[0]
    assert lifecycle.job_of(p) is None


def test_one_mask_for_every_frame_runs_the_webuis_init_once(webui):
    mask = half_mask(0)
    p = FakeImg2Img(webui.outdir, [mask])
    run_job(p)
    assert HOOK_ERRORS == []
    assert p.init_calls == [(FRAMES, FRAMES, [1000 + k for k in range(FRAMES)])]
    ((sampled_mask, _, _),) = p.sampled
    assert sampled_mask.shape == (4, SIZE // 8, SIZE // 8)  # the WebUI's own, broadcast


def test_only_masked_with_per_frame_masks_is_refused_naming_the_option(webui):
    p = FakeImg2Img(webui.outdir, [half_mask(k) for k in range(FRAMES)])
    vars(p)["inpaint_full_res"] = True
    hook(lifecycle.before_process, p, request(), True)
    with pytest.raises(lifecycle.AnimateDiffError, match=r"'Only masked' \(inpaint_full_res=True\)"):
        p.init(["a cat"] * FRAMES, [1] * FRAMES, [1] * FRAMES)
    p.close()
    assert p.init_calls == [] and lifecycle.job_of(p) is None
