"""Fixtures of the real-host tier: a real WebUI v1.10.1 on CPU with this extension installed.

Runs only when ``SD_WEBUI_DIR`` points at a WebUI checkout (and ``SD_WEBUI_PYTHON`` names its
interpreter, default ``$SD_WEBUI_DIR/venv/bin/python``); otherwise every test here is skipped with
the reason. Everything the server needs is made at test time in a temp folder: a tiny
random-weight checkpoint (from the checkout's own config), a random motion module with the real
key layout, a private data dir whose extensions/ links this repository and a test-only
fault-injection extension.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from realhost_server import (
    DIFFUSERS_LORA,
    MM_IDENTITY,
    MM_NAME,
    MOTION_LORA,
    NOWHERE_LORA,
    OFFICIAL_LORA,
    PLAIN,
    V3_ADAPTER,
    WebUIServer,
    decode_image,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXTENSION_NAME = "sd-webui-animatediff-next"


def _webui_dir() -> Path | None:
    value = os.environ.get("SD_WEBUI_DIR")
    return Path(value).resolve() if value else None


def _webui_python(webui: Path) -> str:
    return os.environ.get("SD_WEBUI_PYTHON") or str(webui / "venv" / "bin" / "python")


def skip_reason() -> str | None:
    webui = _webui_dir()
    if webui is None:
        return (
            "real-host tier: set SD_WEBUI_DIR to a WebUI v1.10.1 checkout (and SD_WEBUI_PYTHON to its python)"
        )
    if not (webui / "launch.py").is_file() or not (webui / "modules" / "processing.py").is_file():
        return f"real-host tier: SD_WEBUI_DIR={webui} is not a WebUI checkout (no launch.py/modules)"
    python = _webui_python(webui)
    if not os.access(python, os.X_OK):
        return f"real-host tier: WebUI interpreter {python} not found; set SD_WEBUI_PYTHON"
    return None


def pytest_collection_modifyitems(config, items):
    reason = skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(marker)


def pytest_report_header(config):
    reason = skip_reason()
    return reason or f"real-host tier: WebUI at {_webui_dir()} with {_webui_python(_webui_dir())}"


# --- assets ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def realhost_root():
    """Our own temp folder, not pytest's basetemp: pytest runs elsewhere on the machine prune
    old basetemps, which would pull the files from under a running server. Kept when
    SD_WEBUI_KEEP=1 (server logs are in data-*/webui-*.log)."""
    root = Path(tempfile.mkdtemp(prefix="realhost-"))
    yield root
    if os.environ.get("SD_WEBUI_KEEP") != "1":
        shutil.rmtree(root, ignore_errors=True)


def run_webui_python(script: Path, *args: str, timeout: float = 300) -> list[str]:
    """``script`` under the WebUI's interpreter with ``--webui <checkout>`` and ``args``, offline;
    the lines it printed (a failure is reported with the tail of its output)."""
    webui = _webui_dir()
    out = subprocess.run(
        [_webui_python(webui), str(script), "--webui", str(webui), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert out.returncode == 0, (
        f"{script.name} {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout.splitlines()


def run_make_assets(*args: str, timeout: float = 300) -> list[str]:
    """make_assets.py under the WebUI's interpreter with ``args``; the lines it printed."""
    return run_webui_python(HERE / "make_assets.py", *args, timeout=timeout)


def make_checkpoints(root: Path) -> Path:
    """Tiny random SD1.5 checkpoint + same-named yaml in ``root``, built by the WebUI's own
    interpreter; a second one (``SECOND_CHECKPOINT``, other weights) sits beside it. Returns the
    first. (Also used by benchmarks/bench_controlnet.py.)"""
    lines = run_make_assets("--out", str(root), "--second")
    paths = [Path(line) for line in lines if line.endswith(".safetensors")]
    assert len(paths) == 2 and all(p.is_file() and p.with_suffix(".yaml").is_file() for p in paths), lines
    return paths[0]


def full_size_checkpoint() -> Path:
    """The full-size random SD1.5 checkpoint (+ yaml) in make_assets' cache folder, built there
    by the WebUI's interpreter the first time (a few minutes, ~2 GB fp16) and reused after.
    (Used by benchmarks/bench_realhost_speed.py --full-size.)"""
    path = Path(run_make_assets("--full-size", timeout=1800)[-1])
    assert path.is_file() and path.with_suffix(".yaml").is_file(), path
    return path


def make_motion_modules(root: Path, full_size: bool = False) -> Path:
    """The random v3 motion module (``MM_NAME``) and its identity twin in ``root/motion-modules``;
    ``full_size``: only ``MM_NAME``, at SD1.5's real widths (mm_sd15_v3's 560 tensors, fp16,
    ~830 MB), linked from make_assets' cache folder where it is made once."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from safetensors.torch import save_file

    from tests.factories import MINI_SD15, make_mm_state_dict

    folder = root / "motion-modules"
    folder.mkdir()
    if full_size:
        (folder / MM_NAME).symlink_to(full_size_motion_module())
        return folder
    state = make_mm_state_dict("v3", widths=MINI_SD15, std=0.05, seed=7)
    save_file(state, str(folder / MM_NAME))
    identity = {k: (v.zero_() if ".proj_out." in k else v) for k, v in state.items()}
    save_file(identity, str(folder / MM_IDENTITY))
    return folder


def full_size_motion_module() -> Path:
    """A random v3 module at SD1.5's widths in the cache folder, built if missing. std 0.01 (not
    the mini's 0.05): at 1280 channels the layers' gain stays below one, as a trained module's."""
    import torch
    from make_assets import FULL_SIZE_VERSION, full_size_cache
    from safetensors.torch import save_file

    from tests.factories import FULL_SD15, make_mm_state_dict

    path = Path(full_size_cache()) / f"mm_sd15_v3_full_random-v{FULL_SIZE_VERSION}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        state = make_mm_state_dict("v3", widths=FULL_SD15, std=0.01, seed=7, dtype=torch.float16)
        partial = path.with_suffix(".partial")
        save_file(state, str(partial))
        partial.replace(path)
    return path


@pytest.fixture(scope="session")
def checkpoint(realhost_root) -> Path:
    """Tiny random SD1.5 checkpoint + same-named yaml, built by the WebUI's own interpreter; a
    second one (``SECOND_CHECKPOINT``, other weights) sits beside it for checkpoint switches."""
    return make_checkpoints(realhost_root)


@pytest.fixture(scope="session")
def motion_module_dir(realhost_root) -> Path:
    """A random v3-family motion module at the tiny UNet's widths (32, 64, 128, 128), and its
    identity twin (proj_out zeroed), the control for "the motion module acts on the frames"."""
    return make_motion_modules(realhost_root)


@pytest.fixture(scope="session")
def motion_lora_dir(realhost_root) -> Path:
    """Random LoRAs for the random v3 module and the tiny SD1.5 UNet, in the forms users have:
    one rank-4 motion LoRA for every attention projection under official keys
    (OFFICIAL_LORA: ``…processor.to_q_lora.down.weight``), diffusers keys (DIFFUSERS_LORA) and
    A1111-converted keys (MOTION_LORA: ``<underscored layer path>.lora_down.weight``), all with
    the same numbers; NOWHERE_LORA (the converted keys with a prefix no layer has); and a v3
    domain adapter under its official keys (V3_ADAPTER). No alpha entries: scale 1. The API
    server finds them in <data-dir>/models/Lora."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from safetensors.torch import save_file

    from tests.factories import (
        MINI_SD15,
        converted_lora_keys,
        diffusers_lora_keys,
        make_full_v3_adapter,
        make_motion_lora,
    )

    folder = realhost_root / "motion-loras"
    folder.mkdir()
    official = {k: v * 0.25 for k, v in make_motion_lora(MINI_SD15, rank=4, seed=11, mid=False).items()}
    converted = converted_lora_keys(official)
    save_file(official, str(folder / f"{OFFICIAL_LORA}.safetensors"))
    save_file(diffusers_lora_keys(official), str(folder / f"{DIFFUSERS_LORA}.safetensors"))
    save_file(converted, str(folder / f"{MOTION_LORA}.safetensors"))
    save_file({"nowhere_" + k: v for k, v in converted.items()}, str(folder / f"{NOWHERE_LORA}.safetensors"))
    adapter = make_full_v3_adapter(MINI_SD15, context_dim=64, rank=4, seed=12)
    save_file({k: v * 0.25 for k, v in adapter.items()}, str(folder / f"{V3_ADAPTER}.safetensors"))
    return folder


def make_data_dir(root: Path, name: str, mm_dir: Path, lora_dir: Path | None = None) -> Path:
    """A private --data-dir: settings (motion-module folder), this repo, the fault injector and
    the Lora probe as extensions, the test LoRAs in models/Lora. The WebUI checkout itself is
    never written to."""
    data = root / name
    (data / "extensions").mkdir(parents=True)
    (data / "extensions" / EXTENSION_NAME).symlink_to(REPO, target_is_directory=True)
    shutil.copytree(HERE / "fault_extension", data / "extensions" / "zz-realhost-fault")
    shutil.copytree(HERE / "lora_probe_extension", data / "extensions" / "zz-realhost-lora-probe")
    if lora_dir is not None:
        shutil.copytree(lora_dir, data / "models" / "Lora")
    (data / "config.json").write_text(json.dumps({"animatediff_model_path": str(mm_dir)}))
    return data


def start_server(
    root: Path,
    name: str,
    ckpt: Path,
    mm_dir: Path,
    api_only: bool,
    lora_dir: Path | None = None,
    prepare=None,
):
    """``prepare(data_dir)``, if given, adds to the private data dir before the server starts."""
    webui = _webui_dir()
    data_dir = make_data_dir(root, name, mm_dir, lora_dir)
    if prepare is not None:
        prepare(data_dir)
    server = WebUIServer(
        webui_dir=webui,
        python=_webui_python(webui),
        data_dir=data_dir,
        ckpt=ckpt,
        api_only=api_only,
        threads=os.environ.get("SD_WEBUI_THREADS", "1"),
    )
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def api_server(realhost_root, checkpoint, motion_module_dir, motion_lora_dir):
    """API-only server (--nowebui). ``server.fresh_plain`` is the PLAIN job's images from the
    freshly started server, before any AnimateDiff job ran."""
    server = start_server(
        realhost_root, "data-api", checkpoint, motion_module_dir, api_only=True, lora_dir=motion_lora_dir
    )
    with serving(server):
        yield server


@pytest.fixture(scope="module")
def ui_server(request, realhost_root, checkpoint, motion_module_dir):
    """Full server with the gradio UI (no --nowebui), for the browser tests; one per test module,
    each with its own data dir."""
    name = f"data-ui-{request.module.__name__}"
    server = start_server(realhost_root, name, checkpoint, motion_module_dir, api_only=False)
    try:
        yield server
    finally:
        server.stop()


# --- SDXL ------------------------------------------------------------------------------------------

SDXL_BETA = "mm_sdxl_v10_beta.safetensors"  # random SDXL beta, widths of the tiny SDXL UNet
HOTSHOT = "hsxl_temporal_layers.safetensors"  # random HotShot-XL in HotShot's own key format
SD15_IN_SDXL_FOLDER = "mm_sd15_v3.safetensors"  # an SD1.5 module: refused for the SDXL checkpoint
SD15_NEUTRAL_NAME = "temporaldiff-v1-animatediff.safetensors"  # SD1.5, the name does not say so
SDXL_MOTION_LORA = "mm_sdxl_lora_official"  # official keys for SDXL_BETA's layers


@pytest.fixture(scope="session")
def sdxl_checkpoint(realhost_root) -> Path:
    """Tiny random SDXL checkpoint (sgm layout) + same-named yaml, built by the WebUI's interpreter."""
    lines = run_make_assets("--out", str(realhost_root / "sdxl"), "--sdxl")
    path = Path(lines[-1])
    assert path.is_file() and path.with_suffix(".yaml").is_file(), lines[-20:]
    return path


@pytest.fixture(scope="session")
def sdxl_motion_dir(realhost_root) -> Path:
    """Random SDXL beta and HotShot-XL modules at the tiny SDXL UNet's widths (32, 64, 128), made
    now, and two SD1.5 modules, one whose name does not say it is SD1.5."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from safetensors.torch import save_file

    from tests.factories import MINI_SD15, MINI_SDXL, make_mm_state_dict, to_hotshot_keys

    folder = realhost_root / "sdxl-motion-modules"
    folder.mkdir()
    save_file(make_mm_state_dict("sdxl_beta", widths=MINI_SDXL, std=0.05, seed=21), str(folder / SDXL_BETA))
    hotshot = make_mm_state_dict("hotshot_xl", widths=MINI_SDXL, std=0.05, seed=22)
    save_file(to_hotshot_keys(hotshot), str(folder / HOTSHOT))
    save_file(make_mm_state_dict("v3", widths=MINI_SD15, seed=7), str(folder / SD15_IN_SDXL_FOLDER))
    save_file(make_mm_state_dict("v1", widths=MINI_SD15, seed=8), str(folder / SD15_NEUTRAL_NAME))
    return folder


@pytest.fixture(scope="session")
def sdxl_lora_dir(realhost_root) -> Path:
    """An official-key motion LoRA (…processor.to_q_lora.down.weight) for the SDXL beta module."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from safetensors.torch import save_file

    from tests.factories import MINI_SDXL, make_motion_lora

    folder = realhost_root / "sdxl-loras"
    folder.mkdir()
    state = {k: v * 0.25 for k, v in make_motion_lora(MINI_SDXL, rank=4, seed=13, mid=False).items()}
    save_file(state, str(folder / f"{SDXL_MOTION_LORA}.safetensors"))
    return folder


@pytest.fixture(scope="module")
def sdxl_server(realhost_root, sdxl_checkpoint, sdxl_motion_dir, sdxl_lora_dir):
    """API-only server on the tiny SDXL checkpoint (the test-only tiny OpenCLIP registered);
    ``server.fresh_plain`` is the PLAIN job's images right after the start."""

    def prepare(data: Path) -> None:
        shutil.copytree(HERE / "tiny_openclip_extension", data / "extensions" / "zz-realhost-tiny-openclip")
        # live previews load the SDXL latent approximator, which the WebUI would download; it
        # has the SD1.5 one's layout, which the checkout ships
        approx = data / "models" / "VAE-approx"
        approx.mkdir(parents=True)
        shutil.copy(_webui_dir() / "models" / "VAE-approx" / "model.pt", approx / "vaeapprox-sdxl.pt")

    server = start_server(
        realhost_root,
        "data-sdxl",
        sdxl_checkpoint,
        sdxl_motion_dir,
        api_only=True,
        lora_dir=sdxl_lora_dir,
        prepare=prepare,
    )
    with serving(server):
        yield server


# --- sd-webui-controlnet ---------------------------------------------------------------------------

CN_MODEL_STEM = "tiny-random-control"  # <data-dir>/models/ControlNet/<stem>.safetensors
IP_ADAPTER_STEM = "ip-adapter_sd15_tiny_random"  # beside it; "sd15" tells ControlNet the SD version
IP_ADAPTER_CLIP_DIM = 32  # the image-embedding width of the probe's tiny CLIP tower (TINY_CLIP_H)


def controlnet_source() -> tuple[Path | None, str]:
    """The WebUI checkout's sd-webui-controlnet folder, or None and why not."""
    webui = _webui_dir()
    if webui is None:
        return None, "SD_WEBUI_DIR is not set"
    folder = webui / "extensions" / "sd-webui-controlnet"
    if not (folder / "scripts" / "controlnet.py").is_file():
        return None, f"no sd-webui-controlnet at {folder} (install v1.1.455 there to run these tests)"
    return folder, ""


def prepare_controlnet(data: Path, checkpoint: Path, source: Path) -> None:
    """A data dir made ready for ControlNet: ``source`` linked into extensions/, the probe
    (cn_probe_extension), a random ControlNet and a random IP-Adapter for ``checkpoint``'s UNet
    in models/ControlNet, ControlNet's preprocessor models in the data dir (an empty
    clip_vision/clip_h.pth: the probe builds a tiny seeded tower in its place, and ControlNet
    downloads only missing files) and an empty media/ folder. (Also used by
    benchmarks/bench_controlnet.py.)"""
    import torch
    from make_assets import build_controlnet, build_ip_adapter

    models = link_controlnet(data, source)
    build_controlnet(str(checkpoint), str(models / f"{CN_MODEL_STEM}.safetensors"))
    build_ip_adapter(str(checkpoint), str(models / f"{IP_ADAPTER_STEM}.safetensors"), IP_ADAPTER_CLIP_DIM)
    annotators = data / "controlnet-annotators"
    (annotators / "clip_vision").mkdir(parents=True)
    # the legacy format: the WebUI's safe unpickler refuses the .format_version entry of new zips
    torch.save({}, annotators / "clip_vision" / "clip_h.pth", _use_new_zipfile_serialization=False)
    config = json.loads((data / "config.json").read_text())
    config["control_net_modules_path"] = str(annotators)
    (data / "config.json").write_text(json.dumps(config))


def link_controlnet(data: Path, source: Path) -> Path:
    """ControlNet (``source``) linked into the data dir's extensions/, the probe
    (cn_probe_extension) beside it, and empty models/ControlNet (returned) and media/ folders."""
    (data / "extensions" / "sd-webui-controlnet").symlink_to(source, target_is_directory=True)
    shutil.copytree(HERE / "cn_probe_extension", data / "extensions" / "zz-realhost-cn-probe")
    models = data / "models" / "ControlNet"
    models.mkdir(parents=True)
    (data / "media").mkdir()
    return models


@contextlib.contextmanager
def serving(server):
    """The started ``server`` with ``server.fresh_plain`` (the PLAIN job's images right away, what
    a plain job after any AnimateDiff job must reproduce); stopped when the block ends."""
    try:
        body = server.generate("/sdapi/v1/txt2img", PLAIN)
        server.fresh_plain = [decode_image(b) for b in body["images"]]
        yield server
    finally:
        server.stop()


def controlnet_model_name(server, stem: str = CN_MODEL_STEM) -> str:
    """A test model's name (default: the random ControlNet's) as the running server's ControlNet
    lists it."""
    names = server.get("/controlnet/model_list").json()["model_list"]
    matches = [n for n in names if n.startswith(stem)]
    assert len(matches) == 1, f"ControlNet lists {names}; expected one {stem} [hash]"
    return matches[0]


@pytest.fixture(scope="module")
def cn_server(request, realhost_root):
    """API-only server with sd-webui-controlnet linked into its private extensions/, the ControlNet
    probe (cn_probe_extension) and a random ControlNet for the tiny checkpoint's UNet in
    models/ControlNet (and a random IP-Adapter). ``server.cn_model`` and ``server.ip_adapter_model``
    are their names as ControlNet lists them,
    ``server.media`` a folder inside the data dir for test videos and frames (requests may read
    only inside the data dir: the server is started with --server-name), ``server.fresh_plain``
    the PLAIN job's images right after the start."""
    source, reason = controlnet_source()
    if source is None:
        print(f"\nskipping the ControlNet tests: {reason}")
        pytest.skip(reason)
    checkpoint = request.getfixturevalue("checkpoint")  # built only when the tests can run
    motion_module_dir = request.getfixturevalue("motion_module_dir")
    server = start_server(
        realhost_root,
        f"data-cn-{request.module.__name__}",  # one server per test module, each its own data dir
        checkpoint,
        motion_module_dir,
        api_only=True,
        prepare=lambda data: prepare_controlnet(data, checkpoint, source),
    )
    server.media = server.data_dir / "media"
    with serving(server):
        server.cn_model = controlnet_model_name(server)
        server.ip_adapter_model = controlnet_model_name(server, IP_ADAPTER_STEM)
        yield server


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = REPO / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def cn_ui_server(request, realhost_root):
    """Full server with the gradio UI and sd-webui-controlnet linked into its private extensions/
    (no ControlNet model: for the paths ControlNet takes over without a unit, e.g. its hijack of
    the img2img Batch tab); skipped with the reason when the checkout has no ControlNet."""
    source, reason = controlnet_source()
    if source is None:
        print(f"\nskipping the ControlNet UI tests: {reason}")
        pytest.skip(reason)
    checkpoint = request.getfixturevalue("checkpoint")
    motion_module_dir = request.getfixturevalue("motion_module_dir")

    def prepare(data: Path) -> None:
        (data / "extensions" / "sd-webui-controlnet").symlink_to(source, target_is_directory=True)

    server = start_server(
        realhost_root, "data-cn-ui", checkpoint, motion_module_dir, api_only=False, prepare=prepare
    )
    try:
        yield server
    finally:
        server.stop()


SPARSECTRL_STEM = "v3_sd15_sparsectrl_rgb_random"  # <data-dir>/models/ControlNet/<stem>.safetensors


@pytest.fixture(scope="module")
def sparsectrl_server(realhost_root):
    """API-only server on the full-size random SD1.5 checkpoint and v3 module (sd-webui-controlnet
    builds SparseCtrl at SD1.5's real widths and loads it strictly) with ControlNet linked, the
    probe, and a random SparseCtrl RGB model for that checkpoint (written now, fp16, ~0.8 GB) in
    models/ControlNet; ``server.sparsectrl_model`` is its name as ControlNet lists it,
    ``server.fresh_plain`` the PLAIN job's images right after the start. Several GB of RAM."""
    source, reason = controlnet_source()
    if source is None:
        print(f"\nskipping the SparseCtrl tests: {reason}")
        pytest.skip(reason)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from make_assets import build_sparsectrl_rgb

    from tests.factories import FULL_SD15, make_mm_state_dict

    checkpoint = full_size_checkpoint()
    root = realhost_root / "full-size"
    root.mkdir()
    motion_module_dir = make_motion_modules(root, full_size=True)

    def prepare(data: Path) -> None:
        models = link_controlnet(data, source)
        motion = make_mm_state_dict("v3", widths=FULL_SD15, pe_len=32, include_pe=True, std=0.01, seed=8)
        motion = {k: v for k, v in motion.items() if k.startswith("down_blocks.")}  # SparseCtrl's sites
        build_sparsectrl_rgb(str(checkpoint), str(models / f"{SPARSECTRL_STEM}.safetensors"), motion)

    server = start_server(
        realhost_root, "data-sparsectrl", checkpoint, motion_module_dir, True, prepare=prepare
    )
    server.media = server.data_dir / "media"
    with serving(server):
        server.sparsectrl_model = controlnet_model_name(server, SPARSECTRL_STEM)
        yield server
