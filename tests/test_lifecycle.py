"""The lifecycle against the real ldm UNet and small WebUI fakes: the patch session is applied and
undone bit-exactly, on success and with a failure injected at every step; a stale session is
closed at the next start; rejected parameters and failed setups stop the job instead of letting
it run on as a batch of stills."""

from __future__ import annotations

import re
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from factories import (
    MINI_SD15,
    MINI_SDXL,
    converted_lora_keys,
    install_fake_webui,
    make_full_v3_adapter,
    make_mm_state_dict,
    make_motion_lora,
    make_sd15_unet,
    sd15_model_fields,
    unet_inputs,
)
from safetensors.torch import save_file

import scripts.animatediff_webui as adapter
from motion_module import layers
from motion_module.injection import MotionBlock
from motion_module.spec import SPECS, Family, alphas_cumprod
from scripts.animatediff_webui import job as jobs
from scripts.animatediff_webui import lifecycle
from scripts.animatediff_webui.patch_session import PatchSession

pytestmark = pytest.mark.usefixtures("single_thread")

FRAMES = 4


# --- WebUI fakes -------------------------------------------------------------------------------


class FakeState:
    def __init__(self):
        self.interrupted = self.skipped = False
        self.job_count, self.job_no, self.textinfo = 1, 0, ""

    def nextjob(self):
        self.job_no += 1


class FakeP:
    """The parts of StableDiffusionProcessing the lifecycle touches; methods record calls."""

    def __init__(self, sampler=None):
        self.prompt, self.negative_prompt = "a cat", "lowres"
        self.batch_size, self.n_iter = 1, 1
        self.enable_hr, self.is_hr_pass, self.iteration, self.styles = False, False, 0, []
        self.extra_generation_params = {}
        self.do_not_save_grid = self.do_not_save_samples = False
        self.outpath_samples = "/nonexistent"
        self.sampler = sampler
        self.calls = []

    def setup_prompts(self):
        self.calls.append("setup_prompts")

    def init(self, *args):
        self.calls.append("init")

    def sample(self, *args, **kwargs):
        self.calls.append("sample")
        return "samples"

    def close(self):
        self.calls.append("close")


class FakeDenoiserSeam(types.ModuleType):
    """Stands in for denoiser.install: one reversible change to the CFG denoiser."""

    def __init__(self):
        super().__init__("scripts.animatediff_webui.denoiser")
        self.installs = []

    def install(self, session, cfg_denoiser, params, layout, per_frame_inputs=None):
        self.installs.append((params.window.context, params.frames))
        saved = cfg_denoiser.inner_model
        session.step(
            "windowed denoiser",
            lambda: setattr(cfg_denoiser, "inner_model", ("wrapped", saved)),
            lambda: setattr(cfg_denoiser, "inner_model", saved),
        )


@pytest.fixture
def mm_dir(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "motion_modules"
    if not folder.exists():
        folder.mkdir()
        save_file(make_mm_state_dict(Family.V1), str(folder / "mm_sd_v15.safetensors"))
        save_file(make_mm_state_dict(Family.V3, seed=1), str(folder / "v3_sd15_mm.safetensors"))
        save_file(make_mm_state_dict(Family.SDXL_BETA), str(folder / "mm_sdxl_v10_beta.safetensors"))
        (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    return folder


@pytest.fixture(scope="module")
def unet():
    return make_sd15_unet()


@pytest.fixture
def webui(monkeypatch, mm_dir, unet):
    """Fake ``modules.shared`` / ``modules.devices`` in sys.modules, an SD1.5 model on the real UNet."""
    sd_model = SimpleNamespace(**sd15_model_fields(unet, {"diffusion_model_out_0": unet.out[0]}))
    shared = install_fake_webui(monkeypatch, sd_model=sd_model, state=FakeState(), model_dir=mm_dir)
    seam = FakeDenoiserSeam()
    monkeypatch.setitem(sys.modules, "scripts.animatediff_webui.denoiser", seam)
    monkeypatch.setattr(adapter, "denoiser", seam, raising=False)
    exported = []
    monkeypatch.setattr(
        jobs.output,
        "export_processed",
        lambda p, processed, params, **kw: exported.append((params, kw)) or SimpleNamespace(errors=[]),
    )
    yield SimpleNamespace(shared=shared, sd_model=sd_model, unet=unet, seam=seam, exported=exported)
    lifecycle.close_stale("test teardown")


def snapshot(sd_model, unet):
    """Everything the session may touch, by value and by identity."""
    return {
        "modules": [(name, id(m)) for name, m in unet.named_modules()],
        "tensors": {k: v.clone() for k, v in unet.state_dict().items()},
        "own_forwards": [name for name, m in unet.named_modules() if "forward" in m.__dict__],
        "alphas": (id(sd_model.alphas_cumprod), id(sd_model.alphas_cumprod_original)),
        "mapping": dict(sd_model.network_layer_mapping),
        "output": run_unet(unet),
    }


def run_unet(unet):
    x, t, context = unet_inputs(2 * FRAMES, size=8)
    with torch.no_grad():
        return unet(x, t, context=context)


def assert_unchanged(before, sd_model, unet):
    after = snapshot(sd_model, unet)
    assert after["modules"] == before["modules"]
    assert after["own_forwards"] == before["own_forwards"]
    assert after["alphas"] == before["alphas"]
    assert after["mapping"] == before["mapping"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key
    assert torch.equal(after["output"], before["output"])


def api_args(**values):
    return [
        {"enable": True, "video_length": FRAMES, "batch_size": FRAMES, "model": "mm_sd_v15.safetensors"}
        | values
    ]


def start(p, args, is_img2img=False):
    lifecycle.before_process(p, args, is_img2img)
    lifecycle.process(p)
    lifecycle.before_process_batch(p)
    p.sampler = p.sampler or SimpleNamespace(model_wrap_cfg=SimpleNamespace(inner_model="inner"))
    lifecycle.process_before_every_sampling(p)


# --- tests ---------------------------------------------------------------------------------------


def test_fp8_weight_storage_reaches_the_motion_module(webui, monkeypatch):
    """With the WebUI's FP8 storage on (``devices.fp8``; ``dtype_unet`` stays the working dtype)
    motion Linear weights are stored in FP8, every one of them is named for the Lora extension
    (typed nn.Linear for the job, so its LoRA loader takes them), they compute under the autocast
    the WebUI samples in with FP8 on a CPU, and the job restores the UNet bit for bit."""
    before = snapshot(webui.sd_model, webui.unet)
    monkeypatch.setattr(sys.modules["modules.devices"], "fp8", True, raising=False)
    p = FakeP()
    start(p, api_args())
    job = lifecycle.job_of(p)
    assert job is not None and job.error is None
    linears = [m for m in job.loaded.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 20 * 12 and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    mapping = webui.sd_model.network_layer_mapping
    named = {id(m) for m in mapping.values()}
    assert all(id(m) in named and type(m) is torch.nn.Linear for m in linears)
    with job.layout.using(FRAMES), torch.autocast("cpu", dtype=torch.bfloat16):
        out = run_unet(webui.unet)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    assert all(type(m) is layers.Linear for m in linears)
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_a_pending_fp8_reload_runs_before_the_injection(webui, monkeypatch):
    """A request that switches FP8 storage on makes the WebUI reload the weights into the same
    model at the first batch, walking every module: it must happen before the motion module is
    in the UNet (then the WebUI's own call has nothing left to do), and the module follows FP8."""
    devices = sys.modules["modules.devices"]
    monkeypatch.setattr(devices, "fp8", False, raising=False)
    reloads = []

    def reload_model_weights():
        reloads.append(sum(isinstance(m, MotionBlock) for m in webui.unet.modules()))
        devices.fp8 = True

    sd_models = types.ModuleType("modules.sd_models")
    sd_models.model_data = SimpleNamespace(sd_model=webui.sd_model)
    sd_models.check_fp8 = lambda model: True  # the override asks for FP8
    sd_models.reload_model_weights = reload_model_weights
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)
    monkeypatch.setattr(sys.modules["modules"], "sd_models", sd_models, raising=False)
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, api_args())
    job = lifecycle.job_of(p)
    assert reloads == [0]  # once, with no motion block in the UNet yet
    proj_out = job.loaded.model.site_modules()["up_blocks.0.motion_modules.0"].temporal_transformer.proj_out
    assert proj_out.weight.dtype == torch.float8_e4m3fn
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    start(FakeP(), api_args())  # FP8 already on: nothing to reload
    assert reloads == [0]
    lifecycle.close_stale("test")
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_success_applies_every_step_and_postprocess_restores_bit_identical(webui):
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, api_args())
    job = lifecycle.job_of(p)
    assert job is not None and job.error is None
    assert p.batch_size == FRAMES and p.do_not_save_grid
    assert (
        "AnimateDiff" in p.extra_generation_params and "mm_hash: " in p.extra_generation_params["AnimateDiff"]
    )
    # While open: motion blocks in the UNet, the family's schedule, Lora names, wrapped denoiser.
    assert (
        sum(isinstance(m, MotionBlock) for m in webui.unet.modules()) == 20
    )  # v1: 2 per down level + 3 per up level, no mid block
    assert webui.sd_model.alphas_cumprod is webui.sd_model.alphas_cumprod_original
    assert torch.equal(webui.sd_model.alphas_cumprod, alphas_cumprod(SPECS[Family.V1]))
    mapping = webui.sd_model.network_layer_mapping
    proj_in = mapping["down_blocks_0_motion_modules_0_temporal_transformer_proj_in"]
    assert (
        proj_in
        is job.loaded.model.site_modules()["down_blocks.0.motion_modules.0"].temporal_transformer.proj_in
    )
    assert proj_in.network_layer_name in mapping and mapping[proj_in.network_layer_name] is proj_in
    assert p.sampler.model_wrap_cfg.inner_model[0] == "wrapped"
    assert webui.seam.installs == [(FRAMES, FRAMES)]
    with job.layout.using(FRAMES):
        assert not torch.equal(run_unet(webui.unet), before["output"])  # frames now influence each other
    assert p.sample() == "samples"
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    assert len(webui.exported) == 1 and webui.exported[0][0].frames == FRAMES
    assert lifecycle.job_of(p) is None
    assert_unchanged(before, webui.sd_model, webui.unet)
    assert p.sampler.model_wrap_cfg.inner_model == "inner"
    assert type(p) is FakeP and "close" not in p.__dict__ and "sample" not in p.__dict__  # p is plain again


MOTION_LORA_KEY = (  # an A1111-converted motion LoRA's layer name (docs/checkpoint-layouts.md)
    "down_blocks_1_motion_modules_1_temporal_transformer_transformer_blocks_0_attention_blocks_0_to_q"
)


def test_motion_lora_names_resolve_the_way_the_lora_extension_applies_them(webui, monkeypatch):
    """The builtin Lora extension files a LoRA's weights under the mapping key a file key matched
    and applies them to the layer whose ``network_layer_name`` is that key; its LoRA loader refuses
    any layer whose type is not exactly nn.Linear. Both must hold while the job is open, and the
    motion module gets its own Linear class back afterwards. Networks it read for an earlier job
    (when no motion layer was registered) are marked out of date, so it reads them again."""
    cached = SimpleNamespace(mtime=123.0)
    networks = types.ModuleType("networks")
    networks.loaded_networks, networks.networks_in_memory = [cached], {"mm_lora": cached}
    monkeypatch.setitem(sys.modules, "networks", networks)
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, api_args())
    assert cached.mtime == float("-inf") and networks.loaded_networks == [cached]
    job = lifecycle.job_of(p)
    to_q = (
        job.loaded.model.site_modules()["down_blocks.1.motion_modules.1"]
        .temporal_transformer.transformer_blocks[0]
        .attention_blocks[0]
        .to_q
    )
    mapping = webui.sd_model.network_layer_mapping
    assert mapping.get(MOTION_LORA_KEY) is to_q
    assert to_q.network_layer_name == MOTION_LORA_KEY
    assert type(to_q) is torch.nn.Linear
    names = [k for k, m in mapping.items() if isinstance(m, torch.nn.Linear) and k != "diffusion_model_out_0"]
    assert all(type(mapping[k]) is torch.nn.Linear and mapping[k].network_layer_name == k for k in names)
    with job.layout.using(FRAMES):
        out = run_unet(webui.unet)
    assert torch.isfinite(out).all()
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    assert type(to_q) is layers.Linear
    assert_unchanged(before, webui.sd_model, webui.unet)


class FakeNet:
    """A network the builtin Lora extension keeps in memory (name, file, mtime)."""

    def __init__(self, filename, mtime=5.0):
        self.network_on_disk, self.mtime = SimpleNamespace(filename=filename), mtime


def fake_networks(monkeypatch, files):
    """The builtin Lora extension's module: it reads files through ``sd_models.read_state_dict``."""
    sd_models = types.ModuleType("modules.sd_models")
    sd_models.read_state_dict = lambda filename: files[filename]
    sd_models.read_metadata_from_safetensors = "the WebUI's own"
    networks = types.ModuleType("networks")
    networks.sd_models = sd_models
    networks.loaded_networks, networks.networks_in_memory = [], {}
    monkeypatch.setitem(sys.modules, "networks", networks)
    return networks, sd_models


def test_official_motion_lora_files_reach_the_lora_extension_by_layer_name(webui, monkeypatch):
    """During the job the Lora extension reads an official-key motion LoRA under the names the
    motion layers are registered by, each half with the shape of its layer; another LoRA passes
    through as it was read; after the job it reads files itself again, and the networks it read
    through the converter are out of date (read again next time)."""
    official = make_motion_lora(MINI_SD15, rank=2, seed=3, mid=False)
    kohya = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32)}
    files = {"/loras/v2_lora_PanLeft.ckpt": official, "/loras/style.safetensors": kohya}
    networks, sd_models = fake_networks(monkeypatch, files)
    p = FakeP()
    start(p, api_args())
    job = lifecycle.job_of(p)
    reader = networks.sd_models
    assert reader is not sd_models and reader.read_metadata_from_safetensors == "the WebUI's own"
    converted = reader.read_state_dict("/loras/v2_lora_PanLeft.ckpt")
    assert len(converted) == len(official) == 20 * 8 * 2
    mapping = webui.sd_model.network_layer_mapping
    for key, value in converted.items():
        layer, _, half = key.partition(".")
        weight = mapping[layer].weight
        assert value.shape == ((weight.shape[0], 2) if half == "lora_up.weight" else (2, weight.shape[1]))
    stem = "up_blocks.1.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1"
    up = official[f"{stem}.processor.to_v_lora.up.weight"]
    name = stem.replace(".", "_") + "_to_v"
    assert torch.equal(converted[f"{name}.lora_up.weight"], up)
    assert mapping[name] is job.loaded.model.get_submodule(f"{stem}.to_v")
    assert reader.read_state_dict("/loras/style.safetensors") is kohya
    networks.networks_in_memory = {
        "v2_lora_PanLeft": FakeNet("/loras/v2_lora_PanLeft.ckpt"),
        "style": FakeNet("/loras/style.safetensors"),
    }
    assert job.error is None
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    assert networks.sd_models is sd_models
    assert networks.networks_in_memory["v2_lora_PanLeft"].mtime == float("-inf")
    assert networks.networks_in_memory["style"].mtime == 5.0
    assert reader.read_state_dict("/loras/v2_lora_PanLeft.ckpt") is official  # inert if kept somewhere


def name_unet_layers(webui, monkeypatch):
    """Every UNet module in the mapping under ``diffusion_model_<path>``, as the WebUI's Lora
    extension names them when it loads a model."""
    mapping = {("diffusion_model." + n).replace(".", "_"): m for n, m in webui.unet.named_modules() if n}
    monkeypatch.setattr(webui.sd_model, "network_layer_mapping", mapping)


def test_the_official_v3_adapter_reaches_the_spatial_attention_layers(webui, monkeypatch):
    adapter = make_full_v3_adapter(MINI_SD15, context_dim=64)
    networks, _ = fake_networks(monkeypatch, {"/loras/v3_sd15_adapter.ckpt": adapter})
    name_unet_layers(webui, monkeypatch)
    p = FakeP()
    start(p, api_args())
    converted = networks.sd_models.read_state_dict("/loras/v3_sd15_adapter.ckpt")
    assert len(converted) == len(adapter) == 16 * 8 * 2
    mapping = webui.sd_model.network_layer_mapping
    name = "diffusion_model_output_blocks_5_1_transformer_blocks_0_attn2_to_out_0"
    assert mapping[name] is webui.unet.output_blocks[5][1].transformer_blocks[0].attn2.to_out[0]
    down = adapter["up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor.to_out_lora.down.weight"]
    assert torch.equal(converted[f"{name}.lora_down.weight"], down)
    assert lifecycle.job_of(p).error is None
    lifecycle.postprocess(p, SimpleNamespace(images=[]))


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        (
            lambda: {"nowhere_" + k: v for k, v in converted_lora_keys(make_motion_lora(MINI_SD15)).items()},
            "LoRA file bad.safetensors: none of its 168 layers is a layer of the loaded AnimateDiff v1 "
            "motion module",
        ),
        (
            lambda: make_motion_lora(MINI_SDXL, mid=False),  # an SDXL motion LoRA: other widths
            "LoRA file bad.safetensors does not fit the loaded AnimateDiff v1 motion module",
        ),
        (
            lambda: make_full_v3_adapter(MINI_SD15, context_dim=32),  # attn2 k/v read 32, the UNet 64
            "LoRA file bad.safetensors does not fit the loaded SD1.5 checkpoint: 32 of 128 layers",
        ),
    ],
)
def test_a_motion_lora_file_that_fits_nothing_stops_the_job_naming_it(webui, monkeypatch, lora, message):
    networks, sd_models = fake_networks(monkeypatch, {"/loras/bad.safetensors": lora()})
    name_unet_layers(webui, monkeypatch)
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, api_args())
    assert networks.sd_models.read_state_dict("/loras/bad.safetensors") == {}
    with pytest.raises(lifecycle.AnimateDiffError, match=re.escape(message)) as caught:
        p.sample()
    assert caught.value.status_code == 422
    p.close()
    assert networks.sd_models is sd_models
    assert_unchanged(before, webui.sd_model, webui.unet)


def count_steps(webui):
    names = []
    real_step = PatchSession.step

    def recording(self, name, apply, undo):
        names.append(name)
        return real_step(self, name, apply, undo)

    PatchSession.step = recording
    try:
        p = FakeP()
        start(p, api_args())  # the steps up to sampling (export's own step is tested elsewhere)
    finally:
        PatchSession.step = real_step
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    return names


def test_failure_at_every_step_leaves_unet_bit_identical_and_stops_the_job(webui, monkeypatch):
    names = count_steps(webui)
    assert {"inject motion module", "beta schedule", "Lora layer names", "windowed denoiser"} <= set(names)
    before = snapshot(webui.sd_model, webui.unet)
    real_step = PatchSession.step
    for failing in range(len(names)):
        calls = []

        def step(self, name, apply, undo, failing=failing, calls=calls):
            calls.append(name)
            if len(calls) - 1 == failing:
                raise RuntimeError(f"injected failure at {name}")
            return real_step(self, name, apply, undo)

        monkeypatch.setattr(PatchSession, "step", step)
        p = FakeP()
        start(p, api_args())
        monkeypatch.setattr(PatchSession, "step", real_step)
        # The job never runs on as stills: whatever the WebUI calls next raises our error.
        with pytest.raises(
            lifecycle.AnimateDiffError, match=re.escape(f"injected failure at {names[failing]}")
        ):
            p.sample()
        p.close()  # processing always closes p
        assert lifecycle.job_of(p) is None
        assert_unchanged(before, webui.sd_model, webui.unet)


def test_exception_mid_sampling_is_cleaned_up_by_p_close(webui):
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, api_args())
    assert lifecycle.job_of(p) is not None  # sampling "raises": postprocess is never called
    p.close()
    assert p.calls[-1] == "close"  # the WebUI's own close still runs
    assert lifecycle.job_of(p) is None
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_stale_session_is_closed_at_the_next_job_start(webui):
    before = snapshot(webui.sd_model, webui.unet)
    stale = FakeP()
    start(stale, api_args())  # neither postprocess nor close ever comes
    fresh = FakeP()
    lifecycle.before_process(fresh, [{"enable": False}], False)
    assert lifecycle.job_of(stale) is None and lifecycle.job_of(fresh) is None
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_unload_hook_closes_the_session(webui):
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, api_args())
    lifecycle.on_script_unloaded()
    assert_unchanged(before, webui.sd_model, webui.unet)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (api_args(fps=0), "fps = 0 is not allowed; expected a whole number 1..240"),
        (api_args(closed_loop="Q"), "closed_loop = 'Q'"),
        (api_args(overlap=9), "overlap = 9"),
        (api_args(model="missing.safetensors"), "model = 'missing.safetensors' was not found"),
        (
            api_args(model="/etc/passwd"),
            "model = '/etc/passwd' is not allowed; expected a motion-module file",
        ),
        (api_args(audio="/nonexistent/song.wav"), "audio '/nonexistent/song.wav'"),
        (api_args(audio_onsets="both"), "audio_onsets = 'both' needs audio"),
        (api_args(travel_curve="curve", travel_curve_args="0:(0), 2:(x)"), "at character 10"),
        (api_args(model="broken.safetensors"), "model = 'broken.safetensors' cannot be used: "),
        (
            api_args(model="mm_sdxl_v10_beta.safetensors"),
            "model = 'mm_sdxl_v10_beta.safetensors' (AnimateDiff SDXL beta) is made for SDXL checkpoints, "
            "but the loaded checkpoint tiny-sd15 is SD1.5; pick a motion module made for SD1.5 (available: "
            "broken.safetensors, mm_sd_v15.safetensors, v3_sd15_mm.safetensors)",
        ),
        (api_args(batch_size=32, video_length=40), "this motion module has only 24 position slots"),
    ],
)
def test_rejected_params_stop_the_job_with_the_message(webui, args, message):
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    start(p, args)
    for step in (p.setup_prompts, p.init, p.sample):
        with pytest.raises(lifecycle.AnimateDiffError, match=re.escape(message)) as caught:
            step()
        assert caught.value.status_code == 422 and caught.value.detail == str(caught.value)
    assert "sample" not in p.calls
    p.close()
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_validation_errors_are_http_422(webui):
    p = FakeP()
    start(p, api_args(stride=0))
    with pytest.raises(lifecycle.AnimateDiffError) as caught:
        p.setup_prompts()
    assert caught.value.status_code == 422 and "stride = 0" in caught.value.detail


def test_unsupported_checkpoint_stops_the_job(webui):
    webui.sd_model.is_sd1, webui.sd_model.is_sd2 = False, True
    p = FakeP()
    start(p, api_args())
    with pytest.raises(lifecycle.AnimateDiffError, match="SD2 checkpoints have no motion modules"):
        p.init()


def test_disabled_panel_with_an_invalid_value_does_not_stop_plain_generation(webui):
    p = FakeP()
    ui_values = ["mm_sd_v15.safetensors", False, 16, 0]  # fps 0 while AnimateDiff is off
    start(p, ui_values)
    assert lifecycle.job_of(p) is None
    assert p.setup_prompts() is None and p.sample() == "samples"


def test_failure_inside_a_sampling_pass_stops_the_sampler(webui, monkeypatch):
    before = snapshot(webui.sd_model, webui.unet)

    def broken_install(*args, **kwargs):
        raise RuntimeError("window schedule exploded")

    monkeypatch.setattr(webui.seam, "install", broken_install)
    sampler = SimpleNamespace(model_wrap_cfg=SimpleNamespace(inner_model="inner"))
    p = FakeP(sampler=sampler)
    start(p, api_args())
    with pytest.raises(lifecycle.AnimateDiffError, match="window schedule exploded"):
        sampler.sample()
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_error_in_cfg_callback_interrupts_and_surfaces_from_sample(webui, monkeypatch):
    p = FakeP()
    start(p, api_args())

    def broken(session, params):
        raise RuntimeError("bad conditioning")

    monkeypatch.setattr(lifecycle.conditioning, "on_cfg_denoiser", broken)
    lifecycle.on_cfg_denoiser(SimpleNamespace(denoiser=SimpleNamespace(p=p, inner_model="inner")))
    assert webui.shared.state.interrupted
    with pytest.raises(
        lifecycle.AnimateDiffError, match="sampling setup failed: RuntimeError: bad conditioning"
    ):
        p.sample()
    p.close()


def test_checkpoint_switch_between_jobs(webui):
    first = FakeP()
    start(first, api_args())
    lifecycle.postprocess(first, SimpleNamespace(images=[]))
    other = make_sd15_unet(seed=3)
    webui.sd_model.model.diffusion_model = other
    before = snapshot(webui.sd_model, other)
    second = FakeP()
    start(second, api_args(model="v3_sd15_mm.safetensors"))
    assert lifecycle.job_of(second).host.unet is other
    assert any(isinstance(m, MotionBlock) for m in other.modules())
    lifecycle.postprocess(second, SimpleNamespace(images=[]))
    assert_unchanged(before, webui.sd_model, other)


def test_model_swap_mid_job_is_refused(webui):
    p = FakeP()
    start(p, api_args())
    webui.sd_model.model.diffusion_model = make_sd15_unet(seed=5)
    lifecycle.before_hr(p)
    with pytest.raises(lifecycle.AnimateDiffError, match="checkpoint changed during the job"):
        p.sample()


def test_img2img_init_image_count_must_fit_the_frames(webui):
    p = FakeP()
    p.init_images = ["a", "b"]
    start(p, api_args(), is_img2img=True)
    with pytest.raises(
        lifecycle.AnimateDiffError, match="video_length is 4, but 'img2img init images' has only 2"
    ):
        p.setup_prompts()


def test_img2img_with_one_init_image_per_frame_takes_its_length_from_them(webui):
    before = snapshot(webui.sd_model, webui.unet)
    p = FakeP()
    p.init_images = list("abcdef")
    start(p, api_args(video_length=0), is_img2img=True)
    assert lifecycle.job_of(p).params.frames == 6 and p.batch_size == 6
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    shorter = FakeP()
    shorter.init_images = list("abcdef")
    start(shorter, api_args(video_length=4), is_img2img=True)
    assert shorter.init_images == list("abcd") and shorter.batch_size == 4  # the first frames
    lifecycle.postprocess(shorter, SimpleNamespace(images=[]))
    assert shorter.init_images == list("abcdef")
    assert_unchanged(before, webui.sd_model, webui.unet)


def test_export_progress_and_png_through_webui(webui, monkeypatch):
    webui.shared.opts.data["animatediff_save_to_custom"] = False
    p = FakeP()
    start(p, api_args(format=["GIF", "PNG"]))
    assert not p.do_not_save_samples  # the WebUI saves the PNG frames itself
    state = webui.shared.state
    seen = []
    monkeypatch.setattr(
        jobs.output,
        "export_processed",
        lambda p, processed, params, **kw: seen.append(
            (params, state.job_no, state.job_count, state.textinfo)
        ),
    )
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    params, job_no, job_count, text = seen[-1]
    assert [f.value for f in params.export.formats] == ["GIF"]
    assert (job_no, job_count, text) == (0, 2, "AnimateDiff: saving the video")  # its own phase
    assert (state.job_no, state.job_count) == (0, 1)  # given back after the job


def test_real_denoiser_seam_wraps_and_unwraps_the_inner_model(webui, monkeypatch):
    import importlib

    monkeypatch.delitem(sys.modules, "scripts.animatediff_webui.denoiser")
    real = importlib.import_module("scripts.animatediff_webui.denoiser")
    assert hasattr(real, "WindowedForward")
    monkeypatch.setattr(adapter, "denoiser", real)

    class Inner:
        def forward(self, x, sigma, **kwargs):
            return x

    inner = Inner()
    sampler = SimpleNamespace(model_wrap_cfg=SimpleNamespace(inner_model=inner, step=0))
    p = FakeP(sampler=sampler)
    start(p, api_args())
    assert "forward" in inner.__dict__  # windowed for this pass
    cfg = SimpleNamespace(
        denoiser=SimpleNamespace(p=p, inner_model=inner, step=0), text_cond=None, text_uncond=None
    )
    monkeypatch.setattr(lifecycle.conditioning, "on_cfg_denoiser", lambda session, params: None)
    lifecycle.on_cfg_denoiser(cfg)  # the same denoiser again: a no-op, no error
    assert lifecycle.job_of(p).error is None
    lifecycle.postprocess(p, SimpleNamespace(images=[]))
    assert "forward" not in inner.__dict__


def test_copies_of_p_are_not_the_job(webui):
    """X/Y/Z cells and ADetailer copy p (with our attributes); a copy neither owns nor closes the
    job, and a generation nested in the job runs without AnimateDiff."""
    import copy

    p = FakeP()
    start(p, api_args())
    job = lifecycle.job_of(p)
    nested = copy.copy(p)
    nested.calls = []
    assert lifecycle.job_of(nested) is None
    assert nested.sample() == "samples" and nested.calls == ["sample"]
    lifecycle.before_process(nested, api_args(), False)  # ADetailer re-enters process_images
    assert lifecycle.job_of(nested) is None and lifecycle.job_of(p) is job and nested.batch_size == FRAMES
    nested.close()
    assert nested.calls[-1] == "close" and lifecycle.job_of(p) is job
    p.close()
    assert lifecycle.job_of(p) is None and p.calls[-1] == "close"
