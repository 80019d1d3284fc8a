"""Starts and stops a real WebUI v1.10.1 server for the real-host tier, and talks to its API.

The server runs from the checkout in ``SD_WEBUI_DIR`` with its own interpreter, a private
``--data-dir`` (config, extensions, outputs) in a temp folder, on 127.0.0.1 and a free port.
Every wait is bounded; the process group is ended when the tier is done.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

HOST = "127.0.0.1"
SECOND_CHECKPOINT = "tiny-random-sd15-b.safetensors"  # built beside the main one (make_assets --second)
MM_NAME = "mm_sd15_v3.safetensors"  # the predecessor's default model name: its payloads name it
MM_IDENTITY = "mm_sd15_v3_identity.safetensors"  # same, proj_out zeroed: every site is the identity
# Random motion LoRAs for MM_NAME's layout, in <data-dir>/models/Lora (used as <lora:NAME:w>):
MOTION_LORA = "mm_lora_random"  # A1111-converted keys: <underscored site path>.lora_{down,up}.weight
OFFICIAL_LORA = "v2_lora_random"  # the same numbers under official keys (…processor.to_q_lora.down.weight)
DIFFUSERS_LORA = "mm_lora_random_diffusers"  # the same numbers under diffusers keys (unet.…attn1.…)
NOWHERE_LORA = "mm_lora_nowhere"  # same shapes, keys that name no layer
V3_ADAPTER = "v3_sd15_adapter_random"  # the v3 domain adapter's official keys, for the tiny UNet


def txt2img_job(seed: int, steps: int, size: int = 64, **fields) -> dict:
    """The tier's txt2img request (Euler, CFG 7, size × size) with ``fields`` added."""
    return {
        "prompt": "a photo of a cat",
        "negative_prompt": "",
        "seed": seed,
        "sampler_name": "Euler",
        "steps": steps,
        "cfg_scale": 7,
        "width": size,
        "height": size,
        **fields,
    }


# A plain txt2img job: compared bit for bit before and after AnimateDiff jobs.
PLAIN = txt2img_job(seed=1234, steps=3, batch_size=2)
START_TIMEOUT = 240  # seconds: imports (~30 s), model load, script load, on a loaded 2-core box
REQUEST_TIMEOUT = 300

# Flags that skip what a test machine must not do (installs, downloads, CUDA and version checks)
# and run everything on the CPU in fp32.
BASE_FLAGS = [
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--skip-python-version-check",
    "--no-download-sd-model",
    "--no-hashing",
    "--use-cpu",
    "all",
    "--no-half",
    "--precision",
    "full",
    "--server-name",
    HOST,
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(threads: str) -> dict[str, str]:
    """The server's environment: offline hub, a tuned allocator, no inherited WebUI arguments."""
    env = {k: v for k, v in os.environ.items() if k not in ("COMMANDLINE_ARGS", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # glibc would hand the UNet's temporaries back to the kernel every step (seconds per step)
        GLIBC_TUNABLES="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        PYTHONUNBUFFERED="1",
        COMMANDLINE_ARGS="",
    )
    return env


@dataclass
class WebUIServer:
    webui_dir: Path
    python: str
    data_dir: Path
    ckpt: Path
    api_only: bool = True
    threads: str = "1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        mode = ["--api", "--nowebui"] if self.api_only else ["--api"]
        return [
            self.python,
            "launch.py",
            *BASE_FLAGS,
            *mode,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--ckpt-dir",
            str(self.ckpt.parent),
            "--ckpt",
            str(self.ckpt),
        ]

    def start(self) -> None:
        self.log_path = self.data_dir / f"webui-{self.port}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.webui_dir,
            env=server_env(self.threads),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, ended as a whole in stop()
        )
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        import requests

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"WebUI exited with {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            if not self.api_only and "Startup time:" not in self.log_since(0):
                # With the UI, the WebUI adds its API's middleware only after gradio's server is up;
                # a request in between starts the app, and the WebUI then dies with "Cannot add
                # middleware after an application has started". "Startup time:" comes after that.
                time.sleep(1.0)
                continue
            try:
                if requests.get(self.url + "/sdapi/v1/options", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(
            f"WebUI did not answer /sdapi/v1/options within {START_TIMEOUT} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_bytes().decode("utf-8", "replace").replace("\r", "\n")
        return "\n".join(text.splitlines()[-lines:])

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace").replace("\r", "\n")

    # --- API -------------------------------------------------------------------------------------

    def post(self, path: str, payload: dict, timeout: float = REQUEST_TIMEOUT):
        import requests

        return requests.post(self.url + path, json=payload, timeout=timeout)

    def get(self, path: str, timeout: float = 30):
        import requests

        return requests.get(self.url + path, timeout=timeout)

    def generate(self, path: str, payload: dict, timeout: float = REQUEST_TIMEOUT) -> dict:
        """POST and return the JSON body; a failure message carries the server's log tail."""
        response = self.post(path, payload, timeout)
        assert response.status_code == 200, (
            f"{path} answered {response.status_code}: {response.text[:2000]}\n--- server log ---\n{self.log_tail()}"
        )
        return response.json()


def decode_image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))


def encode_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def info_of(body: dict) -> dict:
    return json.loads(body["info"]) if isinstance(body.get("info"), str) else body.get("info", {})
