"""The catalogue of host changes is complete and exact.

Whole jobs run against recording fakes of the WebUI's objects (``p``, ``shared.state``, the model
object, the sampler and its denoiser) on a real ldm UNet: on success, with a failure injected at
every step, and with an Interrupt in the middle of sampling. After each job every attribute the
extension wrote is back to its value before (except the results the WebUI hands over to be
filled), the UNet is bit-identical, and every write the fakes saw is one the catalogue names.
A grep keeps the catalogue the only place in the adapter that writes to a WebUI object.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from factories import install_fake_webui, make_mm_state_dict, make_sd15_unet, sd15_model_fields
from safetensors.torch import save_file

from motion_module.spec import Family
from scripts.animatediff_webui import host_changes, lifecycle
from scripts.animatediff_webui.patch_session import PatchSession

pytestmark = pytest.mark.usefixtures("single_thread")

FRAMES, CONTEXT = 6, 4  # more frames than the context: the sampler runs in windows
REPO = Path(__file__).resolve().parents[1]

WRITES: list[tuple[str, str]] = []  # (object label, attribute) in the order written


class Recorded:
    """Records every attribute write and delete on the instance under its label."""

    label = "?"

    def __setattr__(self, name, value):
        WRITES.append((self.label, name))
        super().__setattr__(name, value)

    def __delattr__(self, name):
        WRITES.append((self.label, name))
        super().__delattr__(name)


class RecordedDict(dict):
    def __init__(self, label, *args):
        super().__init__(*args)
        self.label = label

    def __setitem__(self, key, value):
        WRITES.append((self.label, "[]"))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        WRITES.append((self.label, "[]"))
        super().__delitem__(key)

    def pop(self, key, *default):
        WRITES.append((self.label, "[]"))
        return super().pop(key, *default)


class FakeState(Recorded):
    label = "state"

    def __init__(self):
        self.interrupted = self.skipped = False
        self.job_count, self.job_no, self.textinfo = 1, 0, ""
        self.current_latent, self.decoded = None, []

    def nextjob(self):
        self.job_no += 1

    def do_set_current_image(self):
        """The live preview: the WebUI VAE-decodes every latent row (its progress grid)."""
        self.decoded.append(self.current_latent.shape[0])


class FakeModel(Recorded):
    label = "sd_model"


class FakeInner(Recorded):
    """The WebUI's model wrapper the CFG denoiser calls; returns its input."""

    label = "inner_model"

    def forward(self, x, sigma, **kwargs):
        return x


class FakeCFG(Recorded):
    label = "cfg"


class FakeSampler(Recorded):
    label = "sampler"

    def sample(self, *args):
        return "samples"

    def sample_img2img(self, *args):
        return "samples"


class FakeP(Recorded):
    label = "p"

    def __init__(self, outdir):
        self.prompt, self.negative_prompt = "0: a cat\n3: a dog", "lowres"
        self.batch_size, self.n_iter, self.iteration = 1, 1, 0
        self.enable_hr, self.is_hr_pass, self.styles, self.is_api = False, False, [], False
        self.extra_generation_params = RecordedDict("p.extra_generation_params")
        self.do_not_save_grid = self.do_not_save_samples = False
        self.outpath_samples = str(outdir)
        self.sampler = None

    def setup_prompts(self):
        pass

    def init(self, *args):
        pass

    def sample(self, *args, **kwargs):
        return "samples"

    def close(self):
        pass


class InterruptedException(BaseException):
    pass


@pytest.fixture(scope="module")
def unet():
    return make_sd15_unet()


@pytest.fixture
def webui(monkeypatch, tmp_path, unet):
    folder = tmp_path / "models"
    folder.mkdir()
    save_file(make_mm_state_dict(Family.V1), str(folder / "mm_sd_v15.safetensors"))
    sd_model = FakeModel()
    mapping = RecordedDict("sd_model.network_layer_mapping", {"out_0": unet.out[0]})
    vars(sd_model).update(sd15_model_fields(unet, mapping))
    samplers = types.ModuleType("modules.sd_samplers_common")
    samplers.InterruptedException = InterruptedException
    shared = install_fake_webui(
        monkeypatch, sd_model=sd_model, state=FakeState(), model_dir=folder, sd_samplers_common=samplers
    )
    cached = types.SimpleNamespace(mtime=7.0)  # a network the builtin Lora extension read before
    networks = types.ModuleType("networks")
    networks.loaded_networks, networks.networks_in_memory = [cached], {"net": cached}
    networks.sd_models = SimpleNamespace(read_state_dict=lambda filename: {})  # how it reads LoRA files
    monkeypatch.setitem(sys.modules, "networks", networks)
    WRITES.clear()
    HOOK_ERRORS.clear()
    yield SimpleNamespace(
        shared=shared, sd_model=sd_model, unet=unet, network=cached, networks=networks, outdir=tmp_path
    )
    lifecycle.close_stale("test teardown")


def request():
    return [
        {
            "enable": True,
            "video_length": FRAMES,
            "batch_size": CONTEXT,
            "overlap": 1,
            "model": "mm_sd_v15.safetensors",
            "format": ["TXT"],
            "window_mode": "unet",  # full-UNet windows: the interrupt check runs between them
        }
    ]


def own_state(obj):
    """What an object holds itself, by identity for objects and by value for plain data."""
    return {
        key: (value if isinstance(value, str | int | float | bool | type(None)) else id(value))
        for key, value in vars(obj).items()
    }


def unet_state(unet):
    return (
        [(name, id(m), type(m)) for name, m in unet.named_modules()],
        [name for name, m in unet.named_modules() if "forward" in m.__dict__],
        {k: v.clone() for k, v in unet.state_dict().items()},
    )


def assert_unet_unchanged(before, unet):
    modules, forwards, tensors = unet_state(unet)
    assert (modules, forwards) == before[:2]
    assert all(torch.equal(tensors[k], v) for k, v in before[2].items())


RESULT_WRITES = {w for change in host_changes.RESULTS for w in change.writes}
CATALOGUE = {
    w
    for c in host_changes.STEPS + host_changes.RESULTS + host_changes.PER_CALL + host_changes.LIFETIME
    for w in c.writes
}


def written(label, attr):
    return f"{label}{attr}" if attr == "[]" else f"{label}.{attr}"


def catalogued(label, attr):
    return written(label, attr) in CATALOGUE


HOOK_ERRORS: list[BaseException] = []


def hook(fn, *args):
    """Call a script hook the way the WebUI's script runner does: it reports and swallows errors."""
    try:
        fn(*args)
    except Exception as error:
        HOOK_ERRORS.append(error)


class Job:
    """One generation as the WebUI drives it, on recording fakes."""

    def __init__(self, webui):
        self.webui = webui
        self.p = FakeP(webui.outdir)
        self.inner = FakeInner()
        self.cfg = FakeCFG()
        vars(self.cfg).update(inner_model=self.inner, step=0, p=self.p)
        self.sampler = FakeSampler()
        vars(self.sampler).update(model_wrap_cfg=self.cfg)
        vars(self.p)["sampler"] = self.sampler  # the WebUI's own write, in p.sample
        self.objects = [self.p, webui.shared.state, webui.sd_model, self.inner, self.cfg, self.sampler]
        self.before = [own_state(o) for o in self.objects]
        self.mapping = dict(webui.sd_model.network_layer_mapping)
        self.lora_reader = webui.networks.sd_models
        self.unet = unet_state(webui.unet)
        WRITES.clear()  # from here on, every write is the extension's

    def setup(self):
        p = self.p
        hook(lifecycle.before_process, p, request(), False)
        p.setup_prompts()
        hook(lifecycle.process, p)
        hook(lifecycle.before_process_batch, p)
        hook(lifecycle.process_before_every_sampling, p)

    def sample(self):
        rows = 2 * FRAMES
        x = torch.randn(rows, 4, 8, 8)
        cond = {"c_crossattn": [torch.randn(rows, 77, 32)]}
        params = SimpleNamespace(denoiser=self.cfg, text_cond=torch.zeros(FRAMES, 77, 32))
        params.text_uncond = torch.zeros(FRAMES, 77, 32)
        hook(lifecycle.on_cfg_denoiser, params)
        return self.inner.forward(x, torch.ones(rows), cond=cond)

    def finish(self):
        processed = SimpleNamespace(images=[], infotexts=[], comments="")
        hook(lifecycle.postprocess_batch_list, self.p, 0)
        hook(lifecycle.postprocess, self.p, processed)
        self.p.close()

    def assert_restored(self):
        for obj, before in zip(self.objects, self.before, strict=True):
            after = own_state(obj)
            for attr in set(before) | set(after):
                if f"{obj.label}.{attr}" in RESULT_WRITES:
                    continue
                assert after.get(attr, "absent") == before.get(attr, "absent"), f"{obj.label}.{attr}"
        assert dict(self.webui.sd_model.network_layer_mapping) == self.mapping
        assert self.webui.network.mtime == 7.0
        assert self.webui.networks.sd_models is self.lora_reader
        assert_unet_unchanged(self.unet, self.webui.unet)
        uncatalogued = sorted({written(label, attr) for label, attr in WRITES if not catalogued(label, attr)})
        assert uncatalogued == []


def test_a_whole_job_writes_only_catalogued_attributes_and_restores_them(webui):
    job = Job(webui)
    job.setup()
    assert lifecycle.job_of(job.p) is not None
    assert job.p.batch_size == FRAMES and "forward" in vars(job.inner)
    out = job.sample()
    assert out.shape == (2 * FRAMES, 4, 8, 8)
    assert job.sampler.sample() == "samples"
    job.finish()
    assert HOOK_ERRORS == []
    assert "AnimateDiff" in job.p.extra_generation_params  # a result: it stays
    job.assert_restored()
    seen = {written(label, attr) for label, attr in WRITES}
    assert {"p.batch_size", "p.__class__", "sd_model.alphas_cumprod", "inner_model.forward"} <= seen


def test_live_previews_decode_a_strip_not_the_whole_video(webui):
    state = webui.shared.state
    latent = torch.zeros(64, 4, 8, 8)
    vars(state)["current_latent"] = latent  # what the sampler stored for a 64-frame batch
    job = Job(webui)
    job.setup()
    state.do_set_current_image()
    assert state.decoded == [host_changes.PREVIEW_FRAMES] and state.current_latent is latent
    job.finish()
    state.do_set_current_image()  # after the job: the WebUI's own preview again
    assert state.decoded == [host_changes.PREVIEW_FRAMES, 64]
    job.assert_restored()


def step_names(webui):
    names = []
    real_step = PatchSession.step

    def recording(self, name, apply, undo):
        names.append(name)
        return real_step(self, name, apply, undo)

    PatchSession.step = recording
    try:
        job = Job(webui)
        job.setup()
        job.sample()
        job.finish()
    finally:
        PatchSession.step = real_step
    return names


def test_every_step_the_job_takes_is_in_the_catalogue(webui):
    names = step_names(webui)
    assert set(names) <= {change.name for change in host_changes.STEPS}
    assert {"inject motion module", "beta schedule", "windowed denoiser", "export phase"} <= set(names)
    assert "Lora files read through the motion-LoRA converter" in names


def test_a_failure_at_any_step_restores_everything(webui, monkeypatch):
    names = step_names(webui)
    real_step = PatchSession.step
    for failing, name in enumerate(names):
        calls = []

        def step(self, step_name, apply, undo, failing=failing, calls=calls):
            calls.append(step_name)
            if len(calls) - 1 == failing:
                raise RuntimeError(f"injected failure at {step_name}")
            return real_step(self, step_name, apply, undo)

        monkeypatch.setattr(PatchSession, "step", step)
        job = Job(webui)
        try:
            job.setup()
            job.sample()
            job.finish()
        except lifecycle.AnimateDiffError as error:  # the WebUI's next step raised it
            assert f"injected failure at {name}" in str(error)
            job.p.close()  # the WebUI closes p even after an error
        finally:
            monkeypatch.setattr(PatchSession, "step", real_step)
        assert lifecycle.job_of(job.p) is None, name
        job.assert_restored()


def test_an_interrupt_mid_sampling_restores_everything(webui):
    job = Job(webui)
    job.setup()
    webui.shared.state.interrupted = True
    vars(webui.shared.state)["interrupted"] = True
    with pytest.raises(InterruptedException):
        job.sample()  # raised between two windows
    job.before[1]["interrupted"] = True  # the user's Interrupt is the WebUI's, not ours
    job.finish()  # the sampler returns early; postprocess still runs
    job.assert_restored()


# Receivers the adapter owns: its own objects may be written anywhere.
OWN = {"self", "job", "log", "error", "key"}
WRITE = re.compile(
    r"setattr\(|__setitem__\(|__class__\s*=|^\s*del\s+\w+\.|^\s*(?P<target>[a-z_]\w*(?:\.\w+)+(?:\s*,\s*[a-z_]\w*(?:\.\w+)+)*)\s*=[^=]"
)


def host_writes_outside_the_catalogue():
    found = []
    for path in sorted((REPO / "scripts").rglob("*.py")):
        if path.name == "host_changes.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = WRITE.search(line)
            if match is None:
                continue
            targets = [t.strip() for t in (match.group("target") or "?.").split(",")]
            if all(t.split(".")[0] in OWN for t in targets):
                continue
            found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return found


def test_only_the_catalogue_writes_to_webui_objects():
    assert host_writes_outside_the_catalogue() == []
