"""The img2img Batch tab as one video, with the WebUI's modules faked: every image of the folder
is one frame's init image, in natural order; the tab's options act as in the WebUI; bad folders
are refused naming the field; without AnimateDiff the WebUI's own loop runs."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
from PIL import Image

from scripts.animatediff_webui import i2i_batch, inpaint_masks


@pytest.fixture
def webui(monkeypatch):
    calls = []
    images = types.ModuleType("modules.images")
    images.read = lambda path: Image.open(path).convert("RGB")
    scripts = types.ModuleType("modules.scripts")
    scripts.scripts_img2img = SimpleNamespace(run=lambda p, *args: None)
    processing = types.ModuleType("modules.processing")
    processing.process_images = lambda p: calls.append(p) or SimpleNamespace(images=["video"])
    modules = types.ModuleType("modules")
    modules.images, modules.scripts, modules.processing = images, scripts, processing
    for name, module in (
        ("modules", modules),
        ("modules.images", images),
        ("modules.scripts", scripts),
        ("modules.processing", processing),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def frames(folder, names, size=(16, 8)):
    folder.mkdir()
    for k, name in enumerate(names):
        Image.new("RGB", size, (k * 20, 0, 0)).save(folder / name)
    return str(folder)


def make_p():
    return SimpleNamespace(
        prompt="a cat", negative_prompt="", override_settings={}, outpath_samples="default"
    )


def test_every_image_is_one_frame_in_natural_order(tmp_path, webui):
    folder = frames(tmp_path / "in", ["frame10.png", "frame2.png", "frame1.png", "notes.txt.png"][:3])
    mask = frames(tmp_path / "mask", ["m.png"])
    p = make_p()
    result = i2i_batch.run_as_video(p, folder, str(tmp_path / "out"), mask, [], to_scale=True, scale_by=2.0)
    assert result.images == ["video"] and webui == [p]  # one generation
    assert [im.getpixel((0, 0))[0] for im in p.init_images] == [40, 20, 0]  # frame1, frame2, frame10
    assert (p.width, p.height) == (32, 16) and p.image_mask.size == (16, 8)
    assert p.outpath_samples == str(tmp_path / "out") and p.override_settings == {"save_to_dirs": False}
    assert getattr(p, i2i_batch.FOLDER_ATTR) == folder  # ControlNet units without input take it


def test_one_mask_per_image_goes_with_its_frame(tmp_path, webui):
    """N masks for N images: all of them, in natural order, ride on p for the job's per-frame
    init; ``image_mask`` is the first (so the WebUI and ControlNet see an inpaint job)."""
    folder = frames(tmp_path / "in", ["f10.png", "f2.png", "f1.png"])
    mask = frames(tmp_path / "mask", ["m10.png", "m2.png", "m1.png"])
    p = make_p()
    i2i_batch.run_as_video(p, folder, "", mask, [])
    masks = getattr(p, inpaint_masks.MASKS_ATTR)
    assert [m.getpixel((0, 0))[0] for m in masks] == [40, 20, 0]  # m1, m2, m10
    assert p.image_mask is masks[0]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "img2img batch input folder .* holds no image files"),
        ("masks", "img2img batch inpaint mask folder holds 2 masks for 3 images"),
        ("only masked", r"holds 3 masks .* 'Only masked' \(inpaint_full_res=True\)"),
    ],
)
def test_bad_folders_are_refused_naming_the_field(tmp_path, webui, case, message):
    folder = frames(tmp_path / "in", ["a.png", "b.png", "c.png"])
    mask = ""
    p = make_p()
    if case == "empty":
        (tmp_path / "empty").mkdir()
        folder = str(tmp_path / "empty")
    elif case == "masks":
        mask = frames(tmp_path / "mask", ["1.png", "2.png"])
    else:
        mask = frames(tmp_path / "mask", ["1.png", "2.png", "3.png"])
        p.inpaint_full_res = True
    with pytest.raises(ValueError, match=message):
        i2i_batch.run_as_video(p, folder, "", mask, [])
    assert webui == []
    assert not hasattr(p, "init_images") and not hasattr(p, "image_mask")  # p left as it was


def test_the_hook_runs_the_webuis_loop_unless_animatediff_is_on(tmp_path, webui, monkeypatch):
    module = SimpleNamespace(process_batch=lambda p, *args, **kwargs: "one image per generation")
    original = module.process_batch
    undo = i2i_batch.install_hook(module)
    assert i2i_batch.install_hook(module) is None  # once
    monkeypatch.setattr(i2i_batch, "enabled_for", lambda p: False)
    assert module.process_batch(make_p(), "in", "", "", []) == "one image per generation"
    monkeypatch.setattr(i2i_batch, "enabled_for", lambda p: True)
    folder = frames(tmp_path / "in", ["a.png", "b.png"])
    assert module.process_batch(make_p(), folder, "", "", []).images == ["video"]
    undo()
    assert module.process_batch is original
