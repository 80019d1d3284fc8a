"""The ControlNet seam with fakes shaped like sd-webui-controlnet's script and units: the video
reaches every enabled unit without an input of its own, the frame count and fps come from it,
every bad input is refused naming its field, and each windowed call sees its frames' hints."""

from __future__ import annotations

import os
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from motion_module.control_batch_input import parse_batch_input
from motion_module.params import parse_params
from scripts.animatediff_webui import controlnet

FRAMES = 10


class Script:
    def __init__(self, title, args_from, args_to):
        self._title, self.args_from, self.args_to = title, args_from, args_to

    def title(self):
        return self._title


class UnitObject:
    """Stands in for ControlNet's pydantic unit: attributes and ``copy(update=...)``."""

    def __init__(self, **fields):
        defaults = dict(enabled=False, module="none", model="m", image=None, mask=None, input_mode="simple")
        vars(self).update(defaults | {"batch_images": None, "batch_mask_dir": None} | fields)

    def copy(self, update):
        return UnitObject(**(vars(self) | update))


def make_p(units, ad=None):
    cn = Script("ControlNet", 2, 2 + len(units))
    scripts = SimpleNamespace(alwayson_scripts=[Script("AnimateDiff", 1, 2), cn])
    return SimpleNamespace(scripts=scripts, script_args=(0, ad or {}, *units)), cn


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A moving square, FRAMES frames at 12 fps."""
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    with imageio.get_writer(path, fps=12, codec="libx264", macro_block_size=1) as writer:
        for k in range(FRAMES):
            frame = np.zeros((32, 32, 3), np.uint8)
            frame[8:16, 2 * k : 2 * k + 8] = 255
            writer.append_data(frame)
    return str(path)


def folder_of(tmp_path, name, count):
    folder = tmp_path / name
    folder.mkdir()
    for k in range(count):
        Image.new("RGB", (16, 16), (k, k, k)).save(folder / f"f{k}.png")
    return str(folder)


def plan(p, roots=None, keep=False, **request):
    params = parse_params({"enable": True, "video_length": 0} | request)
    return controlnet.plan_video(p, params, allowed_roots=roots, keep_frames=keep)


def test_the_video_goes_to_enabled_units_without_an_input(video):
    free = {"enabled": True, "module": "canny", "image": None}
    own = {"enabled": True, "module": "depth", "image": "base64-image"}
    off = {"enabled": False, "module": "none"}
    obj = UnitObject(enabled=True, module="openpose")
    p, cn = make_p([free, own, off, obj])
    result = plan(p, video_source=video)
    assert result.frames == FRAMES and result.fps == pytest.approx(12)
    args = result.script_args
    assert args[:2] == p.script_args[:2]
    assert args[3] is own and args[4] is off  # untouched
    for unit in (args[2], args[5]):
        get = unit.get if isinstance(unit, dict) else lambda k, u=unit: getattr(u, k)
        assert get("input_mode") == "batch" and get("animatediff_batch") is True
        folder, mask, keyframes = parse_batch_input(get("batch_images"))
        assert (mask, keyframes) == (None, None)
        files = get("batch_modifiers")[0](["ignored"], p)
        assert [os.path.basename(f) for f in files] == [f"{k:05d}.png" for k in range(FRAMES)]
        assert all(f.startswith(folder) for f in files)
    assert isinstance(args[5], UnitObject) and obj.input_mode == "simple"  # a copy, not an edit
    controlnet.remove_temp_dirs(result)
    assert not any(os.path.exists(d) for d in result.temp_dirs)


def test_video_path_wins_over_video_source_and_masks_reach_units_without_one(tmp_path, video):
    frames = folder_of(tmp_path, "frames", 8)
    masks = folder_of(tmp_path, "masks", 1)
    p, _ = make_p([{"enabled": True}, {"enabled": True, "mask": "own-mask"}])
    result = plan(p, video_source=video, video_path=frames, mask_path=masks)
    assert result.frames == 8 and result.fps is None and result.temp_dirs == ()  # the video is not read
    first, second = result.script_args[2:]
    assert parse_batch_input(first["batch_images"]) == (frames, masks, None)
    assert parse_batch_input(second["batch_images"]) == (frames, None, None)
    controlnet.remove_temp_dirs(result)


def test_frame_count_truncates_or_is_refused_with_both_numbers(tmp_path):
    frames = folder_of(tmp_path, "frames", 8)
    p, _ = make_p([{"enabled": True}])
    result = plan(p, video_path=frames, video_length=5)
    assert result.frames == 5 and len(result.script_args[2]["batch_modifiers"][0]([], p)) == 5
    with pytest.raises(ValueError, match="video_length is 12.*only 8 images"):
        plan(p, video_path=frames, video_length=12)


def test_a_units_own_folder_with_keyframes(tmp_path):
    frames = folder_of(tmp_path, "keys", 2)
    unit = {"enabled": True, "input_mode": "batch", "batch_images": f"{frames}\nkeyframe:0,9"}
    p, _ = make_p([unit])
    result = plan(p, video_length=12)
    assert result.frames == 12
    assert parse_batch_input(result.script_args[2]["batch_images"]) == (frames, None, (0, 9))
    with pytest.raises(ValueError, match="keyframe"):
        plan(p, video_length=8)


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("no ControlNet", "video_source"),
        ("no unit enabled", "no ControlNet unit is enabled"),
        ("unreadable video", "video_source"),
        ("empty folder", "video_path"),
        ("3 masks for 8 frames", "mask_path"),
        ("outside the allowed folders", "video_path"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(tmp_path, video, case, field):
    frames = folder_of(tmp_path, "frames", 8)
    p, _ = make_p([{"enabled": True}])
    request, roots = {"video_path": frames}, None
    if case == "no ControlNet":
        p = SimpleNamespace(scripts=SimpleNamespace(alwayson_scripts=[]), script_args=())
        request = {"video_source": video}
    elif case == "no unit enabled":
        p, _ = make_p([{"enabled": False}])
    elif case == "unreadable video":
        bad = tmp_path / "broken.mp4"
        bad.write_bytes(os.urandom(2048))
        request = {"video_source": str(bad)}
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        request = {"video_path": str(tmp_path / "empty")}
    elif case == "3 masks for 8 frames":
        request["mask_path"] = folder_of(tmp_path, "masks", 3)
    else:
        roots = [str(tmp_path / "elsewhere")]
    with pytest.raises(ValueError, match=field):
        plan(p, roots=roots, **request)


def test_no_video_and_no_free_unit_changes_nothing(video):
    p, _ = make_p([{"enabled": True, "image": "own"}])
    result = plan(p)
    assert result.script_args is None and result.frames == 16  # the context, as without ControlNet
    with pytest.raises(ValueError, match="every enabled ControlNet unit has an image of its own"):
        plan(p, video_source=video)  # a video that no unit would take is refused, not ignored


@pytest.mark.parametrize(
    ("flags", "public"),
    [
        ({}, False),
        ({"server_name": "127.0.0.1"}, False),
        ({"server_name": "localhost"}, False),
        ({"listen": True}, True),
        ({"share": True}, True),
        ({"server_name": "0.0.0.0"}, True),
    ],
)
def test_paths_are_limited_only_when_the_webui_listens_beyond_this_machine(flags, public):
    from scripts.animatediff_webui import settings

    get = lambda key, default: {"animatediff_allowed_folders": "/srv/videos\n"}.get(key, default)  # noqa: E731
    roots = settings.allowed_roots(get, SimpleNamespace(**flags), "/data")
    assert roots == (["/data", "/srv/videos"] if public else None)


def test_each_window_call_sees_its_frames_hints():
    hint = torch.arange(2 * FRAMES, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    shared = torch.ones(1, 3, 4, 4)
    controls = [SimpleNamespace(hint_cond=hint, hr_hint_cond=None), SimpleNamespace(hint_cond=shared)]
    p, cn = make_p([{"enabled": True}])
    cn.latest_network = SimpleNamespace(control_params=controls)
    inputs = controlnet.hint_inputs(p, FRAMES)
    index = torch.tensor([2, 3, 4, 12, 13, 14])  # frames 2-4, cond rows then uncond rows
    with inputs.sliced(index, rows=2 * FRAMES, frames=FRAMES):
        assert controls[0].hint_cond[:, 0, 0, 0].tolist() == [2, 3, 4, 12, 13, 14]
        assert controls[1].hint_cond is shared  # one image for every frame: not sliced
    assert controls[0].hint_cond is hint and controls[0].hr_hint_cond is None
    assert controlnet.hint_inputs(SimpleNamespace(), FRAMES) is None


def test_the_panel_shows_the_uploaded_videos_frames_and_fps(video):
    from scripts.animatediff_webui import ui

    fps, text = ui.video_summary({"name": video})
    assert fps == 12 and f"{FRAMES} frames at 12 fps" in text
    assert ui.video_summary(None) == (None, "")
    fps, text = ui.video_summary(
        video, probe=lambda path: (_ for _ in ()).throw(ValueError("video_source bad"))
    )
    assert fps is None and "video_source bad" in text


def test_ip_adapter_keyframes_travel_like_prompts():
    """ControlNet copies the scheduler, maps its keyframes and interpolates one row per frame."""
    import copy

    from motion_module.prompt_travel import slerp
    from scripts.animatediff_utils import PromptScheduler

    rows = torch.zeros(8, 4, 6)
    rows[0], rows[6] = torch.randn(4, 6), torch.randn(4, 6)
    scheduler = copy.deepcopy(PromptScheduler())
    scheduler.prompt_map = {0: "", 6: ""}
    out = scheduler.multi_cond(rows, False)
    assert out.shape == rows.shape and torch.equal(out[0], rows[0]) and torch.equal(out[6], rows[6])
    torch.testing.assert_close(out[3], slerp(rows[0], rows[6], 0.5))
    assert torch.equal(out[7], rows[6])  # past the last keyframe: held
    looped = scheduler.multi_cond(rows, True)
    assert not torch.equal(looped[7], rows[6])  # closed loop travels back to the first
    scheduler.prompt_map = {2: ""}
    assert scheduler.multi_cond(rows) is rows


def test_ip_adapter_keyframe_embeddings_are_sliced_per_window():
    """IP-Adapter keyframes give an embedding with one row per frame (cond then uncond rows);
    ControlNet's adapter evaluates it against the UNet call's rows, so each window must see its
    own rows. A one-image embedding (one row) is shared by every window."""
    from typing import NamedTuple

    class ImageEmbed(NamedTuple):  # the shape of ControlNet's
        cond_emb: torch.Tensor
        uncond_emb: torch.Tensor

    per_frame = ImageEmbed(torch.arange(2 * FRAMES, dtype=torch.float32).view(-1, 1, 1), torch.zeros(1, 1, 1))
    one_image = ImageEmbed(torch.ones(1, 1, 1), torch.zeros(1, 1, 1))
    adapters = [SimpleNamespace(image_emb=per_frame), SimpleNamespace(image_emb=one_image)]
    controls = [SimpleNamespace(hint_cond=None, control_model=adapter) for adapter in adapters]
    p, cn = make_p([{"enabled": True}])
    cn.latest_network = SimpleNamespace(control_params=controls)
    inputs = controlnet.hint_inputs(p, FRAMES)
    index = torch.tensor([5, 6, 15, 16])
    with inputs.sliced(index, rows=2 * FRAMES, frames=FRAMES):
        assert adapters[0].image_emb.cond_emb.flatten().tolist() == [5, 6, 15, 16]
        assert adapters[0].image_emb.uncond_emb is per_frame.uncond_emb  # one row: shared
        assert adapters[1].image_emb is one_image
    assert torch.equal(adapters[0].image_emb.cond_emb, per_frame.cond_emb)


def test_ip_adapter_rows_follow_each_chunk_and_projections_are_dropped():
    """Motion-module mode runs the per-frame layers over chunks of the call's rows, and
    ControlNet's IP-Adapter evaluates its embedding there against the cond marks it keeps on the
    UNet model (made at the start of each UNet call): a chunk gets the chunk's embedding rows and
    marks; a windowed call gets its embedding rows but leaves the marks to ControlNet. The
    adapter's projections (kept per layer for the whole job) are dropped whenever the rows
    change, before and after, so no call or chunk runs with another one's."""
    from typing import NamedTuple

    class ImageEmbed(NamedTuple):
        cond_emb: torch.Tensor
        uncond_emb: torch.Tensor

    per_frame = ImageEmbed(torch.arange(2 * FRAMES, dtype=torch.float32).view(-1, 1, 1), torch.zeros(1, 1, 1))
    adapter = SimpleNamespace(image_emb=per_frame, cache={"1_to_k_ip": "first call's"})
    marks = torch.cat([torch.ones(FRAMES), torch.zeros(FRAMES)]).view(-1, 1, 1, 1)
    unet = SimpleNamespace(cond_mark=marks)
    p, cn = make_p([{"enabled": True}])
    control = SimpleNamespace(hint_cond=None, hr_hint_cond=None, control_model=adapter)
    cn.latest_network = SimpleNamespace(control_params=[control], model=unet)
    inputs = controlnet.hint_inputs(p, FRAMES)
    assert inputs.read_in_layers

    with inputs.chunk(6, 14, rows=2 * FRAMES, frames=FRAMES):
        assert adapter.cache == {}
        assert adapter.image_emb.cond_emb.flatten().tolist() == list(range(6, 14))
        assert unet.cond_mark.flatten().tolist() == [1.0] * 4 + [0.0] * 4
        adapter.cache["1_to_k_ip"] = "this chunk's"
    assert (
        adapter.cache == {} and adapter.image_emb.cond_emb is per_frame.cond_emb and unet.cond_mark is marks
    )

    index = torch.tensor([2, 3, 12, 13])
    adapter.cache["1_to_k_ip"] = "earlier"
    with inputs.sliced(index, rows=2 * FRAMES, frames=FRAMES):
        assert adapter.cache == {} and adapter.image_emb.cond_emb.flatten().tolist() == [2, 3, 12, 13]
        assert unet.cond_mark is marks  # ControlNet makes this call's marks itself
    assert adapter.image_emb.cond_emb is per_frame.cond_emb and adapter.cache == {}

    one_image = ImageEmbed(torch.ones(1, 1, 1), torch.zeros(1, 1, 1))
    adapter.image_emb = one_image
    with inputs.chunk(16, 20, rows=2 * FRAMES, frames=FRAMES):
        assert adapter.image_emb is one_image  # one row serves every row
        assert unet.cond_mark.flatten().tolist() == [0.0] * 4


def test_without_an_ip_adapter_the_cond_marks_are_left_alone():
    marks = torch.ones(2 * FRAMES, 1, 1, 1)
    p, cn = make_p([{"enabled": True}])
    control = SimpleNamespace(hint_cond=None, hr_hint_cond=None, control_model=SimpleNamespace())
    cn.latest_network = SimpleNamespace(control_params=[control], model=SimpleNamespace(cond_mark=marks))
    inputs = controlnet.hint_inputs(p, FRAMES)
    with inputs.chunk(0, 4, rows=2 * FRAMES, frames=FRAMES):
        assert cn.latest_network.model.cond_mark is marks


def fake_ip_adapter_controlnet(monkeypatch, fields=("cond_emb", "uncond_emb")):
    """ControlNet's pieces the IP-Adapter fix touches: its script (whose ``process`` builds the
    per-frame embedding as ``ImageEmbed(cond, uncond, True)`` from its module globals) and its
    ipadapter_model module (``ImageEmbed`` with ``fields``, ``IPAdapterModel.get_image_emb``)."""
    import sys
    from collections import namedtuple

    image_embed = namedtuple("ImageEmbed", fields)

    class IPAdapterModel:
        def get_image_emb(self, preprocessor_output):
            return ("encoded", preprocessor_output)

    module = SimpleNamespace(ImageEmbed=image_embed, IPAdapterModel=IPAdapterModel)
    monkeypatch.setitem(sys.modules, controlnet.IP_ADAPTER_MODEL_MODULE, module)
    script_globals = {"ImageEmbed": image_embed}
    exec("def process(self, cond, uncond):\n    return ImageEmbed(cond, uncond, True)\n", script_globals)
    script_cls = type("ControlNetScript", (Script,), {"process": script_globals["process"]})
    cn = script_cls("ControlNet", 2, 3)
    p = SimpleNamespace(
        scripts=SimpleNamespace(alwayson_scripts=[cn]), script_args=(0, 0, {}), batch_size=FRAMES
    )
    return p, cn, module


def test_ip_adapter_per_frame_embeddings_pass_controlnet_for_the_job(monkeypatch):
    """ControlNet 1.1.4xx builds an IP-Adapter unit's per-frame embedding with three values for
    an ``ImageEmbed`` that takes two (TypeError, logged by the WebUI, the unit silently dropped).
    For the job its script builds a FrameEmbedding, which its IP-Adapter takes unchanged as an
    ImageEmbed; other inputs are still encoded; closing the job restores both."""
    from scripts.animatediff_webui.patch_session import PatchSession

    p, cn, module = fake_ip_adapter_controlnet(monkeypatch)
    cond, uncond = torch.randn(2 * FRAMES, 4, 8), torch.randn(1, 4, 8)
    with pytest.raises(TypeError):
        cn.process(cond, uncond)  # as ControlNet 1.1.455 fails
    session = PatchSession()
    controlnet.ip_adapter_per_frame(session, p, lambda: True)
    made = cn.process(cond, uncond)
    assert isinstance(made, controlnet.FrameEmbedding) and not isinstance(made, tuple)
    adapter = module.IPAdapterModel()
    taken = adapter.get_image_emb(made)
    assert type(taken) is module.ImageEmbed
    assert taken.cond_emb is cond and taken.uncond_emb is uncond
    assert adapter.get_image_emb("clip output") == ("encoded", "clip output")
    session.close()
    with pytest.raises(TypeError):
        cn.process(cond, uncond)
    assert "get_image_emb" in vars(module.IPAdapterModel)
    assert adapter.get_image_emb(made) == ("encoded", made)


@pytest.mark.parametrize("batched", [True, False])
def test_one_embedding_row_per_frame_gets_the_uncond_rows_too(monkeypatch, batched):
    """One image per frame (no keyframes): ControlNet leaves one cond row per frame, but the
    adapter evaluates against the UNet call's rows, [cond | uncond] when the WebUI batches them;
    the rows are then repeated for the uncond block, and left as they are otherwise."""
    from scripts.animatediff_webui.patch_session import PatchSession

    p, cn, module = fake_ip_adapter_controlnet(monkeypatch)
    session = PatchSession()
    controlnet.ip_adapter_per_frame(session, p, lambda: batched)
    cond = torch.randn(FRAMES, 4, 8)
    taken = module.IPAdapterModel().get_image_emb(cn.process(cond, torch.randn(1, 4, 8)))
    expected = torch.cat([cond, cond]) if batched else cond
    assert torch.equal(taken.cond_emb, expected)
    session.close()


def test_ip_adapter_fix_is_skipped_where_controlnet_handles_it(monkeypatch):
    """An ``ImageEmbed`` with a third field (ControlNet before it dropped it) works as it is:
    nothing is changed; nor without ControlNet."""
    from scripts.animatediff_webui.patch_session import PatchSession

    p, cn, module = fake_ip_adapter_controlnet(monkeypatch, ("cond_emb", "uncond_emb", "bypass_average"))
    session = PatchSession()
    controlnet.ip_adapter_per_frame(session, p, lambda: True)
    controlnet.ip_adapter_per_frame(session, SimpleNamespace(scripts=None), lambda: True)
    assert session.step_names == []
    assert type(cn.process(1, 2)) is module.ImageEmbed


class OnAccelerator(torch.Tensor):
    """A hint as ControlNet leaves it: on the UNet's device (reported as ``cuda:0``; the data
    lives on this test machine's CPU)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


@pytest.fixture
def moves(monkeypatch):
    """(rows, target device type) of every ``Tensor.to`` on an image-shaped (4-D) tensor."""
    seen = []
    real_to = torch.Tensor.to

    def spy_to(self, *args, **kwargs):
        plain = self.as_subclass(torch.Tensor) if isinstance(self, OnAccelerator) else self
        out = real_to(plain, *args, **kwargs)
        if self.dim() == 4:
            seen.append((self.shape[0], out.device.type))
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    return seen


def test_hints_wait_on_the_cpu_and_a_call_gets_its_rows_on_the_device(moves):
    """ControlNet's per-frame hint (on the device) is moved to the CPU once and stays there; a
    windowed UNet call gets only its window's rows moved to the UNet's device (``meta`` stands
    in for it), and the CPU hint is back after the call."""
    data = torch.arange(2 * FRAMES, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    control = SimpleNamespace(hint_cond=data.as_subclass(OnAccelerator), hr_hint_cond=None)
    p, cn = make_p([{"enabled": True}])
    cn.latest_network = SimpleNamespace(control_params=[control])
    inputs = controlnet.hint_inputs(p, FRAMES)
    index = torch.tensor([2, 3, 4, 12, 13, 14])
    for _step in range(2):
        with inputs.sliced(index, rows=2 * FRAMES, frames=FRAMES, device=torch.device("meta")):
            assert control.hint_cond.device.type == "meta" and control.hint_cond.shape[0] == 6
        parked = control.hint_cond
        assert type(parked) is torch.Tensor and parked.device.type == "cpu" and torch.equal(parked, data)
    assert moves == [(2 * FRAMES, "cpu"), (6, "meta"), (6, "meta")], moves  # parked once, never sent whole


@pytest.mark.parametrize("mode", ["unet", "motion_module"])
def test_the_windowed_denoiser_moves_per_frame_inputs_to_the_latents_device(monkeypatch, mode):
    """Every UNet call asks for its rows on the latents' device: a window's rows in whole-UNet
    window mode, every row in motion-module window mode (the UNet sees all frames at once)."""
    from motion_module.frames import FrameLayout
    from motion_module.params import WindowParams
    from motion_module.windows import PerFrameInputs, WindowedDenoiser

    asked = []
    real = PerFrameInputs.sliced

    def sliced(self, index, rows, frames, device=None):
        asked.append((None if index is None else index.numel(), rows, device))
        return real(self, index, rows, frames, device)

    monkeypatch.setattr(PerFrameInputs, "sliced", sliced)
    params = WindowParams(context=4, overlap=1, mode=mode, frame_budget=0)  # one window a call
    denoiser = WindowedDenoiser(lambda x, sigma, **cond: x, params, FrameLayout(), FRAMES)
    denoiser(torch.zeros(2 * FRAMES, 4, 8, 8), torch.ones(2 * FRAMES))
    assert asked and all(device == torch.device("cpu") for _, _, device in asked), asked
    if mode == "unet":
        assert all(n is not None and n < 2 * FRAMES for n, _, _ in asked), asked
    else:
        assert asked == [(None, 2 * FRAMES, torch.device("cpu"))], asked
