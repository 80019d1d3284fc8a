"""The SVD tab's and API's host side against a fake engine and fake WebUI modules.

A request goes through the parser, the queue lock, the progress bar, the (fake) engine's
``generate`` and the real exporter, and comes back as the API's JSON or the tab's gallery. The
fakes check what the WebUI relies on: ``generate`` runs only while the WebUI's queue lock is held,
Interrupt and Skip reach ``should_stop``, and after any failure (injected at every stage) the
progress bar, the lock and the task list are given back and the next request works.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import sys
import textwrap
import threading
import types
from pathlib import Path
from types import SimpleNamespace

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from factories import install_fake_webui
from fastapi import HTTPException
from PIL import Image

from motion_module.svd import pipeline
from motion_module.svd.params import SvdParams, parse_svd_params
from scripts.animatediff_webui import host_changes, svd_api, svd_job, svd_tab

ROOT = Path(__file__).resolve().parent.parent
SVD_WRITES = {w for change in host_changes.SVD for w in change.writes}


# --- fakes ---------------------------------------------------------------------------------------


class FakeLock:
    """The WebUI's queue lock: records who held it."""

    def __init__(self):
        self.held = False
        self.entries = 0

    def __enter__(self):
        assert not self.held, "the queue lock was taken twice"
        self.held, self.entries = True, self.entries + 1

    def __exit__(self, *exc):
        self.held = False


class FakeState:
    """``shared.state``: records every attribute write; begin/end as the WebUI's reset fields."""

    def __init__(self):
        vars(self).update(
            writes=[], calls=[], interrupted=False, skipped=False, job="", job_count=0, job_no=0,
            sampling_step=0, sampling_steps=0, textinfo=None,
        )  # fmt: skip

    def __setattr__(self, name, value):
        self.writes.append(f"state.{name}")
        vars(self)[name] = value

    def begin(self, job="(unknown)"):
        self.calls.append(("begin", job))
        vars(self).update(job=job, job_count=-1, job_no=0, sampling_step=0, interrupted=False, skipped=False)

    def end(self):
        self.calls.append(("end",))
        vars(self).update(job="", job_count=0)

    def interrupt(self):
        self.calls.append(("interrupt",))
        vars(self)["interrupted"] = True


class FakeProgress(types.ModuleType):
    def __init__(self):
        super().__init__("modules.progress")
        self.events = []

    def add_task_to_queue(self, task):
        self.events.append(("queued", task))

    def start_task(self, task):
        self.events.append(("started", task))

    def finish_task(self, task):
        self.events.append(("finished", task))


@dataclasses.dataclass
class FakePlan:
    text: str

    def describe(self):
        return self.text


class FakeEngine:
    """``load_svd`` / ``load_svd_shapes`` / ``memory_plan`` / ``generate`` with what a test wants
    them to do; ``events`` records the loads and, at each stage of ``generate``, the progress
    bar's line."""

    def __init__(self, lock, state):
        self.lock, self.state = lock, state
        self.loads, self.shape_reads, self.calls, self.events = [], [], [], []
        self.fail_at = ""  # "load", "checkpoint", "plan", "generate": raise there
        self.on_step_hook = None  # called as hook(step) after each step
        self.interrupt_before_first = False

    def load_svd(self, path, *, dtype=torch.float32):
        if self.fail_at == "load":
            raise RuntimeError("injected failure while loading")
        self.raise_if_refused(path)
        self.loads.append((os.path.basename(path), dtype))
        self.events.append(("load", self.state.textinfo))
        return self.model(path, dtype, source="weights")

    def load_svd_shapes(self, path, *, dtype=torch.float32):
        self.raise_if_refused(path)
        self.shape_reads.append((os.path.basename(path), dtype))
        if str(path).endswith(".ckpt"):
            return None  # as the engine: a .ckpt has no header
        return self.model(path, dtype, source="header")

    def raise_if_refused(self, path):
        if self.fail_at == "checkpoint":
            raise pipeline.SvdCheckpointError(
                f"{os.path.basename(path)}: not an SVD checkpoint (no model.diffusion_model. keys)"
            )

    @staticmethod
    def model(path, dtype, source):
        default = 25 if "xt" in os.path.basename(path) else 14
        return pipeline.SvdModel(
            name=os.path.basename(path), default_frames=default, components={source: None}, dtype=dtype
        )

    def memory_plan(self, model, params, memory, device):
        if self.fail_at == "plan":
            raise RuntimeError("injected failure while planning")
        (source,) = model.components
        frames = params.frames or model.default_frames
        return FakePlan(
            f"weights 1 KiB from the {source} on {device}, offload {memory.offload}, ff_chunk "
            f"{memory.ff_chunk}, {frames} frames at {params.width}x{params.height}"
        )

    def generate(
        self, model, image, params, *, device, memory, on_step=None, should_stop=None, on_stage=None
    ):
        assert self.lock.held, "generate ran outside the WebUI's queue lock"
        assert self.state.job == svd_job.JOB_NAME and self.state.job_count == 1
        self.calls.append(
            SimpleNamespace(model=model, image=image, params=params, device=device, memory=memory)
        )
        self.events.append(("generate", self.state.textinfo))
        frames = params.frames or model.default_frames
        on_stage("encoding")
        self.events.append(("encoding", self.state.textinfo))
        if self.interrupt_before_first:
            self.state.interrupt()
        on_stage("sampling")
        self.events.append(("sampling", self.state.textinfo))
        done = 0
        for step in range(params.steps):
            if should_stop():
                if done == 0:
                    raise pipeline.SvdInterrupted()
                break
            if self.fail_at == "generate" and step == 1:
                raise RuntimeError("injected failure inside sampling")
            done += 1
            on_step(done, params.steps)
            if self.on_step_hook is not None:
                self.on_step_hook(done)
        on_stage("decoding")
        self.events.append(("decoding", self.state.textinfo))
        seed = params.seed if params.seed >= 0 else 4242
        pictures = [colour_frame(i, params.width, params.height) for i in range(frames)]
        return pipeline.SvdResult(
            frames=pictures, seed=seed, steps_done=done, interrupted=done < params.steps
        )


def colour_frame(i, width, height):
    return Image.new("RGB", (width, height), (20 * i % 256, 255 - 20 * i % 256, 128))


def input_image(size=(32, 24)):
    image = Image.new("RGB", size, (200, 30, 60))
    image.paste((10, 220, 90), (4, 4, 12, 12))
    return image


def b64_png(image, data_url=False):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


@pytest.fixture
def webui(monkeypatch, tmp_path):
    models = tmp_path / "models"
    (models / "svd").mkdir(parents=True)
    for name in ("svd.safetensors", "svd_xt.safetensors"):
        (models / "svd" / name).write_bytes(b"fake")
    lock, state, progress = FakeLock(), FakeState(), FakeProgress()
    call_queue = types.ModuleType("modules.call_queue")
    call_queue.queue_lock = lock
    paths = types.ModuleType("modules.paths")
    paths.models_path = str(models)
    shared = install_fake_webui(
        monkeypatch, sd_model=None, state=state, model_dir=tmp_path, call_queue=call_queue,
        progress=progress, paths=paths,
    )  # fmt: skip
    shared.opts.outdir_img2img_samples = str(tmp_path / "outputs")  # a WebUI default: not in opts.data
    devices = sys.modules["modules.devices"]
    devices.get_device_for = lambda task: torch.device("cpu")
    devices.gc_calls = []
    devices.torch_gc = lambda: devices.gc_calls.append(1)
    engine = FakeEngine(lock, state)
    for name in ("load_svd", "load_svd_shapes", "memory_plan", "generate"):
        monkeypatch.setattr(pipeline, name, getattr(engine, name))
    svd_job.forget_model("test start")
    yield SimpleNamespace(
        shared=shared, lock=lock, state=state, progress=progress, engine=engine, devices=devices,
        folder=models / "svd", outputs=tmp_path / "outputs",
    )  # fmt: skip
    svd_job.forget_model("test end")


def request(**fields):
    return {"image": b64_png(input_image()), "model": "svd.safetensors", "width": 96, "height": 64,
            "steps": 3, "frames": 4, "seed": 7, "formats": ["GIF", "MP4"], **fields}  # fmt: skip


def decoded_gif(b64):
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "GIF"
    return image.n_frames, image.size


def decoded_mp4(tmp_path, b64):
    path = tmp_path / "answer.mp4"
    path.write_bytes(base64.b64decode(b64))
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [frame for frame in reader], reader.get_meta_data()
    finally:
        reader.close()


def assert_idle(webui):
    """The WebUI as after any of its own jobs: lock free, job ended, task finished."""
    assert not webui.lock.held
    assert webui.state.job == "" and webui.state.job_count == 0
    assert webui.state.calls[-1] == ("end",)
    assert sorted({w for w in webui.state.writes} - SVD_WRITES) == []


# --- the API: request -> generate -> export -> answer ------------------------------------------------


def test_api_request_runs_the_engine_and_returns_the_written_videos(webui, tmp_path):
    answer = svd_api.handle(
        request(image=b64_png(input_image(), data_url=True), formats=["GIF", "MP4", "PNG"])
    )
    call = webui.engine.calls[0]
    assert call.params.width == 96 and call.params.height == 64 and call.params.steps == 3
    assert call.params.frames == 4 and call.params.seed == 7 and call.device == torch.device("cpu")
    assert np.array_equal(np.asarray(call.image), np.asarray(input_image()))  # the data: URL decoded
    assert call.memory == pipeline.SvdMemory(offload=True, ff_chunk=0)  # the settings' defaults
    assert webui.engine.loads == [("svd.safetensors", torch.float32)]  # auto on the CPU: float32

    assert answer["video_formats"] == ["GIF", "MP4"] and len(answer["videos"]) == 2
    assert decoded_gif(answer["videos"][0]) == (4, (96, 64))
    frames, meta = decoded_mp4(tmp_path, answer["videos"][1])
    assert len(frames) == 4 and meta["fps"] == 7 and frames[0].shape == (64, 96, 3)
    assert answer["frames"] == []  # only with "Frame" in the formats
    assert answer["frame_count"] == 4 and answer["seed"] == 7 and not answer["interrupted"]
    assert answer["info"].startswith(
        'SVD: "model: svd.safetensors, frames: 4, width: 96, height: 64, steps: 3'
    )
    assert "weights 1 KiB" in answer["memory_plan"] and answer["errors"] == []
    assert answer["parameters"]["formats"] == ["GIF", "MP4", "PNG"] and "image" not in answer["parameters"]
    json.dumps(answer)  # FastAPI sends it as it is

    # files: <img2img outdir>/AnimateDiff/svd/<date>/<seq>-<seed>.*, the infotext inside
    (day,) = (webui.outputs / "AnimateDiff" / "svd").iterdir()
    names = sorted(p.name for p in day.iterdir())
    assert names == ["00000-7", "00000-7.gif", "00000-7.mp4"]
    png = Image.open(day / "00000-7" / "00000.png")
    assert png.text["parameters"] == answer["info"]
    assert_idle(webui)
    assert webui.state.calls[0] == ("begin", svd_job.JOB_NAME)


def test_frames_0_is_the_models_own_count_and_frame_images_follow_the_videos(webui):
    answer = svd_api.handle(request(model="svd_xt.safetensors", frames=0, formats=["GIF", "Frame"]))
    assert webui.engine.calls[0].params.frames == 0  # the engine resolves 0 itself
    assert decoded_gif(answer["videos"][0])[0] == 25 and len(answer["frames"]) == 25
    assert "frames: 25" in answer["info"] and answer["parameters"]["frames"] == 0
    frame = Image.open(io.BytesIO(base64.b64decode(answer["frames"][3])))
    assert frame.getpixel((0, 0)) == colour_frame(3, 96, 64).getpixel((0, 0))


def test_no_model_named_takes_the_first_file(webui):
    answer = svd_api.handle(request(model=""))
    assert (
        webui.engine.loads == [("svd.safetensors", torch.float32)]
        and "model: svd.safetensors" in answer["info"]
    )


def test_infotext_reads_back_into_the_same_request(webui):
    answer = svd_api.handle(request(seed=-1, motion_bucket_id=40, noise_aug_strength=0.1, max_guidance=2.5))
    fields = svd_job.read_infotext("Steps: 3, " + answer["info"])
    back = parse_svd_params(fields)
    sent = parse_svd_params({k: v for k, v in request().items() if k not in ("image", "formats")})
    expected = dataclasses.replace(
        sent, seed=4242, motion_bucket_id=40, noise_aug_strength=0.1, max_guidance=2.5
    )  # the seed the engine picked
    assert dataclasses.replace(back, formats=expected.formats) == expected


# --- refusals ---------------------------------------------------------------------------------------


def refusal(body):
    with pytest.raises(HTTPException) as caught:
        svd_api.handle(body)
    return caught.value.status_code, caught.value.detail


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"image": None}, "image is missing"),
        ({"image": "not base64 at all!"}, "SVD: image = "),
        ({"image": base64.b64encode(b"no picture").decode()}, "SVD: image = "),
        ({"width": 100}, "SVD: width = 100 is not allowed; expected a multiple of 8"),
        ({"steps": 0}, "SVD: steps = 0 is not allowed"),
        ({"min_guidance": 4.0}, "min_guidance = 4.0 is above max_guidance"),
        ({"formats": ["AVI"]}, "SVD: formats = ['AVI'] is not allowed"),
        ({"colour": 1}, "unknown argument 'colour'"),
    ],
)
def test_bad_input_is_422_naming_the_field(webui, change, named):
    body = request(**change)
    if change == {"image": None}:
        del body["image"]
    code, detail = refusal(body)
    assert code == 422 and named in detail, detail
    assert webui.engine.calls == [] and not webui.lock.held and webui.lock.entries == 0


def test_unknown_model_is_422_listing_the_available_ones(webui):
    code, detail = refusal(request(model="svd_xxl.safetensors"))
    assert code == 422
    assert "model = 'svd_xxl.safetensors' is not allowed" in detail
    assert "svd.safetensors, svd_xt.safetensors" in detail and str(webui.folder) in detail


@pytest.mark.parametrize("name", ["../svd.safetensors", "/etc/passwd", "svd.safetensors/.."])
def test_a_model_name_never_leaves_the_folder(webui, name):
    (webui.folder.parent / "svd.safetensors").write_bytes(b"outside")
    code, detail = refusal(request(model=name))
    assert code == 422 and "model = " in detail


def test_a_body_that_is_no_object_is_422(webui):
    assert refusal(["image"])[0] == 422


def test_a_file_that_is_no_svd_checkpoint_is_422_naming_it(webui):
    webui.engine.fail_at = "checkpoint"
    code, detail = refusal(request())
    assert code == 422 and "svd.safetensors: not an SVD checkpoint" in detail
    assert_idle(webui)


# --- the WebUI's lock, progress bar, Interrupt --------------------------------------------------------


def test_the_job_holds_the_queue_lock_and_shows_on_the_progress_bar(webui):
    seen = []
    webui.engine.on_step_hook = lambda step: seen.append(
        (webui.lock.held, webui.state.sampling_step, webui.state.sampling_steps, webui.state.textinfo)
    )
    answer = svd_api.handle(request(steps=3))
    plan = answer["memory_plan"]
    assert seen == [(True, k, 3, f"SVD: step {k}/3. {plan}") for k in (1, 2, 3)]
    assert webui.lock.entries == 1
    assert_idle(webui)


def test_a_second_request_waits_for_the_lock(webui, monkeypatch):
    real_lock = threading.Lock()
    order = []

    class Lock:
        def __enter__(self):
            real_lock.acquire()
            order.append("in")

        def __exit__(self, *exc):
            order.append("out")
            real_lock.release()

    monkeypatch.setattr(sys.modules["modules.call_queue"], "queue_lock", Lock())
    webui.lock.held = True  # the fake engine's check: the real lock above does the work now
    threads = [threading.Thread(target=svd_api.handle, args=(request(seed=s),)) for s in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert order == ["in", "out", "in", "out"]


def test_the_plan_is_read_from_the_header_logged_once_and_on_the_progress_bar_before_the_load(webui, caplog):
    with caplog.at_level("INFO", logger="animatediff"):
        answer = svd_api.handle(request(model="svd_xt.safetensors", frames=0))
    plan = answer["memory_plan"]
    assert plan == "weights 1 KiB from the header on cpu, offload True, ff_chunk 0, 25 frames at 96x64"
    assert webui.engine.shape_reads == [("svd_xt.safetensors", torch.float32)]
    assert webui.engine.events == [
        ("load", f"SVD: loading svd_xt.safetensors. {plan}"),  # shown before the weights are read
        ("generate", f"SVD: loading svd_xt.safetensors. {plan}"),
        ("encoding", f"SVD: encoding the image. {plan}"),
        ("sampling", f"SVD: sampling. {plan}"),
        ("decoding", f"SVD: decoding. {plan}"),
    ]
    logged = [r.getMessage() for r in caplog.records if plan in r.getMessage()]
    assert logged == [f"SVD: svd_xt.safetensors, 25 frames at 96x64, 3 steps; {plan}"]
    svd_api.handle(request(model="svd_xt.safetensors", seed=3))
    assert len(webui.engine.shape_reads) == 1  # the header's model is kept while the file is unchanged


def test_the_header_models_are_kept_per_file_and_dtype_the_newest_few(webui):
    path, other = str(webui.folder / "svd.safetensors"), str(webui.folder / "svd_xt.safetensors")
    svd_job._shapes.clear()
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        svd_job.model_shapes(path, dtype)
    svd_job.model_shapes(path, torch.float16)  # kept: not read again
    assert len(webui.engine.shape_reads) == 4
    svd_job.model_shapes(other, torch.float32)  # a fifth: the oldest goes
    assert len(svd_job._shapes) == svd_job.SHAPES_KEPT == 4
    assert [(os.path.basename(k.path), k.dtype) for k in svd_job._shapes] == [
        ("svd.safetensors", torch.float16),
        ("svd.safetensors", torch.bfloat16),
        ("svd.safetensors", torch.float64),
        ("svd_xt.safetensors", torch.float32),
    ]
    os.utime(path, ns=(0, 10**9))
    svd_job.model_shapes(path, torch.bfloat16)
    assert len(webui.engine.shape_reads) == 6  # the file changed: read again


def test_a_ckpt_is_planned_once_it_is_loaded(webui, caplog):
    (webui.folder / "svd.ckpt").write_bytes(b"fake")
    with caplog.at_level("INFO", logger="animatediff"):
        answer = svd_api.handle(request(model="svd.ckpt"))
    plan = answer["memory_plan"]
    assert plan.startswith("weights 1 KiB from the weights on cpu")
    assert webui.engine.events[0] == ("load", f"SVD: loading svd.ckpt. {svd_job.CKPT_PLAN}")
    assert webui.engine.events[3] == ("sampling", f"SVD: sampling. {plan}")
    assert len([r for r in caplog.records if plan in r.getMessage()]) == 1


def test_the_webuis_stop_after_this_image_lets_the_one_video_finish(webui):
    """The WebUI's "stop generating" flag means "after the current image": between the images of
    a batch. An SVD job is one video (job_count 1), so it runs to its end."""

    def press(step):
        if step == 1:
            vars(webui.state)["stopping_generation"] = True

    webui.engine.on_step_hook = press
    answer = svd_api.handle(request(steps=3))
    assert not answer["interrupted"] and "SVD interrupted" not in answer["info"]


@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_interrupt_and_skip_stop_sampling_through_should_stop(webui, action):
    def press(step):
        if step == 2:
            if action == "interrupt":
                svd_tab.interrupt()  # the tab's button; /sdapi/v1/interrupt calls the same method
            else:
                vars(webui.state)["skipped"] = True  # the WebUI's /sdapi/v1/skip

    webui.engine.on_step_hook = press
    answer = svd_api.handle(request(steps=10))
    assert answer["interrupted"] and 'SVD interrupted: "after step 2 of 10"' in answer["info"]
    assert decoded_gif(answer["videos"][0])[0] == 4  # what it had is saved
    assert_idle(webui)


def test_interrupted_before_the_first_step_answers_with_nothing(webui):
    webui.engine.interrupt_before_first = True
    answer = svd_api.handle(request())
    assert answer["interrupted"] and answer["videos"] == [] and answer["frame_count"] == 0
    assert 'SVD interrupted: "after step 0 of 3"' in answer["info"]
    assert not (webui.outputs / "AnimateDiff").exists()
    assert_idle(webui)


@pytest.mark.parametrize("stage", ["load", "plan", "generate", "export"])
def test_a_failure_at_any_stage_gives_the_webui_back(webui, monkeypatch, stage, caplog):
    real_export = svd_job.export

    def failing_export(*args, **kwargs):
        raise RuntimeError("injected failure while saving")

    if stage == "export":
        monkeypatch.setattr(svd_job, "export", failing_export)
    webui.engine.fail_at = stage
    with caplog.at_level("ERROR", logger="animatediff"):
        code, detail = refusal(request())
    assert code == 500 and detail.startswith("SVD: RuntimeError: injected failure"), detail
    logged = [r for r in caplog.records if "injected failure" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info  # once, with the traceback
    assert "svd.safetensors" in logged[0].getMessage() and "width 96" in logged[0].getMessage()
    assert_idle(webui)
    webui.engine.fail_at = ""
    monkeypatch.setattr(svd_job, "export", real_export)
    assert not svd_api.handle(request())["interrupted"]  # the next request works


def test_the_tab_reports_the_task_to_the_progress_bar(webui):
    image = input_image()
    values = [96, 64, 4, 3, 7, 7, 127, 0.02, 1.0, 3.0, 0, ["GIF", "MP4"]]
    items, info = svd_tab.generate("task(svd-1)", image, "svd.safetensors", *values)
    assert webui.progress.events == [
        ("queued", "task(svd-1)"),
        ("started", "task(svd-1)"),
        ("finished", "task(svd-1)"),
    ]
    assert [Path(item).suffix for item in items[:2]] == [".gif", ".mp4"]
    assert len(items) == 2 + 4 and all(isinstance(frame, Image.Image) for frame in items[2:])
    assert "Memory plan: weights 1 KiB" in info and "model: svd.safetensors" in info and "Saved: " in info
    assert_idle(webui)


def test_the_tab_shows_a_refusal_and_releases_the_progress_bar(webui):
    values = [96, 64, 4, 3, 7, 7, 127, 0.02, 1.0, 3.0, 0, ["GIF"]]
    items, info = svd_tab.generate("task(svd-2)", None, "svd.safetensors", *values)
    assert items == [] and "image is missing" in info
    assert webui.progress.events == [("finished", "task(svd-2)")]


def test_tab_fields_are_the_request_keys_with_the_parser_defaults():
    assert set(svd_tab.FIELDS) <= {f.name for f in dataclasses.fields(SvdParams)}
    assert [key for row in svd_tab.ROWS for key in row] == list(svd_tab.FIELDS)
    values = svd_tab.field_values(SvdParams())
    assert parse_svd_params(values) == SvdParams()
    assert (values["width"], values["height"], values["steps"], values["fps"]) == (1024, 576, 25, 7)


# --- the loaded model ---------------------------------------------------------------------------------


def test_the_model_is_cached_by_file_and_dtype_and_released_on_change(webui):
    svd_api.handle(request())
    svd_api.handle(request(seed=8))
    assert len(webui.engine.loads) == 1  # same file, same dtype: loaded once
    path = webui.folder / "svd.safetensors"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    svd_api.handle(request())
    assert len(webui.engine.loads) == 2 and webui.devices.gc_calls  # a new file: old one released
    webui.shared.opts.data["animatediff_svd_dtype"] = "bfloat16"
    svd_api.handle(request())
    assert webui.engine.loads[-1] == ("svd.safetensors", torch.bfloat16)
    svd_api.handle(request(model="svd_xt.safetensors"))
    assert len(svd_job._cache) == 1 and webui.engine.loads[-1][0] == "svd_xt.safetensors"  # one at most
    svd_job.forget_model("refresh")  # the tab's refresh button
    assert svd_job._cache == {}


def test_keep_loaded_off_releases_the_model_after_each_job(webui):
    webui.shared.opts.data["animatediff_svd_keep_loaded"] = False
    svd_api.handle(request())
    assert svd_job._cache == {}
    svd_api.handle(request())
    assert len(webui.engine.loads) == 2


def test_memory_settings_reach_the_engine(webui):
    webui.shared.opts.data.update(animatediff_svd_offload=False, animatediff_svd_ff_chunk=256)
    webui.shared.opts.data["animatediff_svd_decode_chunk"] = 5
    svd_api.handle(request())
    call = webui.engine.calls[0]
    assert call.memory == pipeline.SvdMemory(offload=False, ff_chunk=256) and call.params.decode_chunk == 5
    svd_api.handle(request(decode_chunk=2))
    assert webui.engine.calls[1].params.decode_chunk == 2  # the request wins over the setting


@pytest.mark.parametrize(
    ("choice", "device", "no_half", "dtype"),
    [
        ("auto", "cpu", False, torch.float32),
        ("auto", "cuda", False, torch.float16),
        ("auto", "cuda", True, torch.float32),
        ("bfloat16", "cpu", False, torch.bfloat16),
        ("float32", "cuda", False, torch.float32),
    ],
)
def test_weight_dtype(choice, device, no_half, dtype):
    assert svd_job.weight_dtype(choice, torch.device(device), no_half) == dtype


def test_the_model_folder_defaults_to_models_svd_and_is_created(webui, tmp_path):
    other = tmp_path / "models" / "svd"
    assert svd_job.model_folder() == str(other)
    webui.shared.opts.data["animatediff_svd_model_path"] = str(tmp_path / "mine")
    assert svd_job.model_folder() == str(tmp_path / "mine") and (tmp_path / "mine").is_dir()
    (tmp_path / "mine" / "a.ckpt").write_bytes(b"")
    (tmp_path / "mine" / "notes.txt").write_bytes(b"")
    assert svd_job.model_choices() == ["a.ckpt"]


# --- the UI under the WebUI's gradio ------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile, types
    sys.path.insert(0, sys.argv[1])
    import gradio as gr
    import torch
    fake = {name: types.ModuleType(name) for name in (
        "modules", "modules.ui_components", "modules.infotext_utils", "modules.shared", "modules.devices")}
    fake["modules.ui_components"].ToolButton = lambda *a, **kw: gr.Button(*a, **kw)
    bindings, paste = [], {}
    class ParamBinding:
        def __init__(self, **kw):
            self.__dict__.update(kw)
    fake["modules.infotext_utils"].ParamBinding = ParamBinding
    fake["modules.infotext_utils"].register_paste_params_button = bindings.append
    fake["modules.infotext_utils"].add_paste_fields = lambda tab, image, fields: paste.update({tab: (image, fields)})
    folder = tempfile.mkdtemp()
    fake["modules.shared"].opts = types.SimpleNamespace(data={"animatediff_svd_model_path": folder})
    fake["modules.shared"].cmd_opts = types.SimpleNamespace(no_half=False)
    fake["modules.devices"].get_device_for = lambda task: torch.device("cpu")
    for name, module in fake.items():
        sys.modules[name] = module
    fake["modules"].shared, fake["modules"].devices = fake["modules.shared"], fake["modules.devices"]
    from motion_module.svd import pipeline
    from motion_module.svd.params import SvdParams
    from scripts.animatediff_webui import svd_job, svd_tab
    from tests.svd_factory import write_tiny_svd
    write_tiny_svd(folder, "svd")
    write_tiny_svd(folder, "svd_xt", seed=1)
    out = {}
    with gr.Blocks():  # the txt2img result area, as the WebUI builds it
        gallery = gr.Gallery(elem_id="txt2img_gallery")
        svd_tab.on_after_component(gallery)
        with gr.Row():
            extras = gr.Button("x", elem_id="txt2img_send_to_extras")
            svd_tab.on_after_component(extras)
    tabs = svd_tab.on_ui_tabs()
    blocks, label, tab_id = tabs[0]
    blocks.get_config_file()  # every component serialises for the browser
    comps = {c.elem_id: c for c in blocks.blocks.values() if getattr(c, "elem_id", None)}
    out["label"], out["id"] = label, tab_id
    out["elem_ids"] = sorted(comps)
    out["model"] = [comps["animatediff_svd_model"].choices, comps["animatediff_svd_model"].value]
    out["values"] = {k: comps["animatediff_svd_" + k].value for k in svd_tab.FIELDS}
    out["paste"] = [list(paste), paste["animatediff_svd"][0] is comps["animatediff_svd_image"]]
    out["bindings"] = [[b.tabname, b.source_image_component is gallery, b.paste_button.elem_id] for b in bindings]

    # the memory plan and the frames hint: as built, then after each change event
    def loaded_plan(model, **fields):  # the plan of the loaded model, for comparison
        params = SvdParams(**fields)
        loaded = pipeline.load_svd(f"{folder}/{model}")
        return pipeline.memory_plan(loaded, params, pipeline.SvdMemory(), torch.device("cpu")).describe()

    def fire(key, value, model, width=1024, height=576, frames=0, decode_chunk=0):
        comp = comps["animatediff_svd_" + key]
        index = next(i for i, d in enumerate(blocks.dependencies) if d["targets"] == [comp._id] and d["trigger"] == "change")
        answer = asyncio.run(blocks.process_api(index, [model, width, height, frames, decode_chunk], state={}))
        return answer["data"]

    frames_comp = comps["animatediff_svd_frames"]
    out["built"] = [comps["animatediff_svd_plan"].value, frames_comp.info, loaded_plan("svd.safetensors")]
    out["to_xt"] = [fire("model", None, "svd_xt.safetensors"), loaded_plan("svd_xt.safetensors")]
    out["width"] = [fire("width", None, "svd_xt.safetensors", width=512), loaded_plan("svd_xt.safetensors", width=512)]
    out["frames"] = [
        fire("frames", None, "svd.safetensors", frames=6, decode_chunk=2),
        loaded_plan("svd.safetensors", frames=6, decode_chunk=2),
    ]
    out["chunk"] = [
        fire("decode_chunk", None, "svd.safetensors", decode_chunk=3),
        loaded_plan("svd.safetensors", decode_chunk=3),
    ]
    write_tiny_svd(folder, "svd", "ckpt")
    out["ckpt"] = fire("model", None, "svd.ckpt")
    out["bad_width"] = fire("height", None, "svd.safetensors", height=100)
    out["no_model"] = fire("model", None, None)
    print("PROBE" + json.dumps(out, default=str))
    """
)


@pytest.fixture(scope="module")
def probe():
    from test_ui import run_probe

    return run_probe(PROBE)


def test_the_tab_builds_under_the_webuis_gradio(probe):
    assert (probe["label"], probe["id"]) == ("SVD", "animatediff_svd")
    for key in ("image", "model", "refresh", "plan", "generate", "interrupt", "gallery", "info", "task_id"):
        assert f"animatediff_svd_{key}" in probe["elem_ids"], key
    assert probe["model"] == [["svd.safetensors", "svd_xt.safetensors"], "svd.safetensors"]
    values = probe["values"]
    assert (values["width"], values["height"], values["frames"], values["steps"], values["seed"]) == (
        1024, 576, 0, 25, -1,
    )  # fmt: skip
    assert values["formats"] == ["GIF", "MP4", "PNG"]


def test_send_to_svd_buttons_bind_the_result_gallery_to_the_tabs_image(probe):
    assert probe["paste"] == [["animatediff_svd"], True]
    assert probe["bindings"] == [["animatediff_svd", True, "txt2img_send_to_animatediff_svd"]]


def plan_html(line):
    return f"<p class='animatediff-svd-plan'>Memory plan: {line}</p>"


def test_the_tab_shows_the_plan_of_the_first_model_before_any_job(probe):
    shown, frames_info, loaded = probe["built"]
    assert "svd_xt" not in loaded and "decoder" in loaded
    assert shown == plan_html(loaded)  # from the header: the loaded model's plan, byte for byte
    assert frames_info == "0 = the model's own count: 14 for svd.safetensors (from its file name)"


def test_choosing_another_model_updates_the_plan_and_the_frames_hint(probe):
    (shown, frames_update), loaded = probe["to_xt"]
    assert shown == plan_html(loaded)
    assert (
        frames_update["info"] == "0 = the model's own count: 25 for svd_xt.safetensors (from its file name)"
    )
    assert frames_update["__type__"] == "update" and "value" not in frames_update  # the count stays
    assert probe["to_xt"][1] != probe["built"][2]  # 25 frames plan more than 14


@pytest.mark.parametrize("change", ["width", "frames", "chunk"])
def test_size_frames_and_decode_chunk_update_the_plan(probe, change):
    (shown,), loaded = probe[change]
    assert shown == plan_html(loaded)
    assert shown != plan_html(probe["built"][2])


def test_the_plan_area_says_why_there_is_no_plan(probe):
    """A .ckpt (no header), a value the job would refuse, no model."""
    (ckpt, frames_update) = probe["ckpt"]
    assert ckpt == plan_html(f"svd.ckpt: {html.escape(svd_job.CKPT_PLAN)}")
    assert frames_update["info"].endswith("14 for svd.ckpt (from its file name)")
    assert probe["bad_width"] == [
        plan_html("SVD: height = 100 is not allowed; expected a multiple of 8 from 64 to 2048")
    ]
    shown, frames_update = probe["no_model"]
    assert shown == plan_html("SVD: choose a model for its memory plan")
    assert frames_update["info"] == "0 = the model's own count: 14 for SVD, 25 for SVD-XT"
