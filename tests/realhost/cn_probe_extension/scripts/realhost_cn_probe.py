"""Test-only WebUI extension of the real-host tier: sizes ControlNet to the tiny test model and
records what its control model sees on every UNet call.

1. sd-webui-controlnet builds every SD1.5 ControlNet at 320 channels (its config is fixed; only
   the hint and context widths come from the weights), so the tier's scaled-down ControlNet
   (32 channels, like the tiny checkpoint's UNet) would not load. ``PlugableControlModel`` is
   built here with the width of the file's hint block, and the keys its ``load_state_dict``
   leaves missing or unexpected (ControlNet ignores both silently) are recorded.
2. ``UnetHook.hook`` receives the full per-frame hints before sampling: each row's fingerprint
   is recorded, for ``hint_cond`` and ``hr_hint_cond``.
3. Every control-model forward (one per UNet call) records the rows of ``x`` and of the hint it
   got, each hint row's fingerprint, and which rows ControlNet took as cond and uncond.
4. Every call of ``get_control`` in ControlNet's scripts/controlnet.py (the function that runs a
   unit's preprocessor over its input images and builds its control tensors; one call per unit
   per job is expected) records the unit, how many images it prepared and how long it took.
5. IP-Adapter: ControlNet's CLIP ViT-H image encoder (``annotator.clipvision``, built from a
   fixed config, weights loaded with ``strict=False`` from models/clip_vision/clip_h.pth) is
   built from ``TINY_CLIP_H`` instead, with seeded random weights (the tier writes an empty
   clip_h.pth so nothing is downloaded). ``PlugableIPAdapter.hook`` records the rows of the
   image embedding it made for the job (``ip_hooks``). Every evaluation of an embedding by an
   attention layer records (``ip_evals``) the UNet call it belongs to (the UNet's forward is
   counted from ControlNet's hook on), the embedding's rows, the cond mark of each row and the
   mark's row count; consecutive identical evaluations in one call are one entry with the
   number of layers. Errors are recorded when an attention layer gets an embedding with
   another row count than its own input (ControlNet would silently reshape it into more
   tokens per row), and when the key or value projection ControlNet hands the layer (it keeps
   them per layer for the whole job) is not the projection of the embedding evaluated now.
   ``IPAdapterModel.get_image_emb`` records the rows of every embedding it makes from an
   encoded image (``ip_encodings``).

``GET /realhost/cn-record`` returns the record; ``POST /realhost/cn-record/reset`` clears it.
Nothing in the product knows about it.
"""

import hashlib
import sys
import threading

from modules import script_callbacks

_lock = threading.Lock()
_record: dict = {
    "loads": [],
    "hooks": [],
    "calls": [],
    "controls": [],
    "ip_hooks": [],
    "ip_evals": [],
    "ip_encodings": [],
    "errors": [],
}
# A CLIP vision tower small enough to build in a blink; IP-Adapters of the tier project its
# 32-wide image embedding.
TINY_CLIP_H = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}
_patched: list[str] = []


def fingerprint(row) -> str:
    data = row.detach().float().contiguous().cpu().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:12]


def _rows(hint) -> list[str]:
    import torch

    if not isinstance(hint, torch.Tensor) or hint.dim() == 0:
        return []
    return [fingerprint(hint[i]) for i in range(hint.shape[0])]


def _shape(value):
    return list(value.shape) if hasattr(value, "shape") else None


_current_hook: list = [None]
_unet_calls = [0]  # UNet forwards since ControlNet's hook, counted by the probe's wrapper


def _patch() -> None:
    cldm = sys.modules.get("scripts.cldm")
    hook = sys.modules.get("scripts.hook")
    if cldm is None or hook is None:
        return
    model_cls = cldm.PlugableControlModel
    if getattr(model_cls, "_realhost_probe", False):
        return
    original_init = model_cls.__init__
    original_forward = model_cls.forward
    original_hook = hook.UnetHook.hook

    def init(self, config, state_dict=None, *args, **kwargs):
        if state_dict is not None and "input_hint_block.14.weight" in state_dict:
            width = int(state_dict["input_hint_block.14.weight"].shape[0])
            if width != config.get("model_channels"):
                config = dict(config, model_channels=width)
        original_init(self, config, state_dict, *args, **kwargs)
        if state_dict is not None:
            have = set(self.control_model.state_dict())
            given = set(state_dict)
            with _lock:
                _record["loads"].append(
                    {
                        "model_channels": config.get("model_channels"),
                        "missing": sorted(have - given),
                        "unexpected": sorted(given - have),
                        "keys": len(given),
                    }
                )

    def forward(self, *args, **kwargs):
        import time

        entry: dict = {}
        try:
            x, hint = kwargs.get("x"), kwargs.get("hint")
            outer = _current_hook[0]
            entry = {
                "x_shape": _shape(x),
                "hint_shape": _shape(hint),
                "hint_rows": _rows(hint),
                "c_indices": list(getattr(outer, "current_c_indices", []) or []),
                "uc_indices": list(getattr(outer, "current_uc_indices", []) or []),
                "hires": bool(getattr(outer, "is_in_high_res_fix", False)),
            }
            with _lock:
                _record["calls"].append(entry)
        except Exception as error:  # never break the job being observed
            with _lock:
                _record["errors"].append(f"forward: {type(error).__name__}: {error}")
        start = time.perf_counter()
        out = original_forward(self, *args, **kwargs)
        entry["seconds"] = time.perf_counter() - start  # the control model alone, not the probe
        return out

    def hook_(self, model, sd_ldm, control_params, process, *args, **kwargs):
        _current_hook[0] = self
        try:
            entry = [
                {
                    "hint_shape": _shape(param.hint_cond),
                    "hint_rows": _rows(param.hint_cond),
                    "hr_hint_shape": _shape(param.hr_hint_cond),
                    "hr_hint_rows": _rows(param.hr_hint_cond),
                }
                for param in control_params
            ]
            with _lock:
                _record["hooks"].append(entry)
        except Exception as error:
            with _lock:
                _record["errors"].append(f"hook: {type(error).__name__}: {error}")
        out = original_hook(self, model, sd_ldm, control_params, process, *args, **kwargs)
        _count_unet_calls(model)
        return out

    model_cls.__init__ = init
    model_cls.forward = forward
    hook.UnetHook.hook = hook_
    model_cls._realhost_probe = True
    _patched.append("patched")
    print("realhost-cn-probe: ControlNet patched", flush=True)


def _count_unet_calls(model) -> None:
    """Wrap the forward ControlNet just put on the UNet (its restore puts back the original,
    dropping the wrapper with it) so that IP-Adapter evaluations know their UNet call."""
    forward = model.forward
    if getattr(forward, "_realhost_probe", False):
        return

    def counted(*args, **kwargs):
        with _lock:
            _unet_calls[0] += 1
        return forward(*args, **kwargs)

    counted._realhost_probe = True
    model.forward = counted


def _controlnet_script_module():
    """ControlNet's scripts/controlnet.py as the WebUI loaded it (by path, not as scripts.controlnet)."""
    from modules import script_loading

    for path, module in script_loading.loaded_scripts.items():
        if path.replace("\\", "/").endswith("sd-webui-controlnet/scripts/controlnet.py"):
            return module
    return None


def _patch_get_control() -> None:
    module = _controlnet_script_module()
    original = getattr(module, "get_control", None)
    if original is None or getattr(original, "_realhost_probe", False):
        return

    def get_control(p, unit, idx, *args, **kwargs):
        import time

        start = time.perf_counter()
        controls, hr_controls, maps = original(p, unit, idx, *args, **kwargs)
        try:
            with _lock:
                _record["controls"].append(
                    {
                        "unit": idx,
                        "images": len(controls),
                        "hr_images": sum(c is not None for c in hr_controls),
                        "animatediff_batch": bool(getattr(unit, "is_animate_diff_batch", False)),
                        "seconds": time.perf_counter() - start,
                    }
                )
        except Exception as error:
            with _lock:
                _record["errors"].append(f"get_control: {type(error).__name__}: {error}")
        return controls, hr_controls, maps

    get_control._realhost_probe = True
    module.get_control = get_control
    print("realhost-cn-probe: get_control patched", flush=True)


def _patch_clip_vision() -> None:
    try:
        import annotator.clipvision as clipvision  # ControlNet's package, imported when it loaded
    except ImportError as error:
        with _lock:
            _record["errors"].append(f"clip vision: {type(error).__name__}: {error}")
        return
    detector = clipvision.ClipVisionDetector
    if getattr(detector, "_realhost_probe", False):
        return
    clipvision.configs["clip_h"].update(TINY_CLIP_H)
    original_init = detector.__init__

    def init(self, *args, **kwargs):
        import torch

        with torch.random.fork_rng(devices=[]):  # the same tower every run, the global RNG untouched
            torch.manual_seed(11)
            original_init(self, *args, **kwargs)

    detector.__init__ = init
    detector._realhost_probe = True
    print("realhost-cn-probe: CLIP ViT-H replaced by a tiny tower", flush=True)


def _patch_ip_adapter() -> None:
    model = sys.modules.get("scripts.ipadapter.ipadapter_model")
    plugable = sys.modules.get("scripts.ipadapter.plugable_ipadapter")
    if model is None or plugable is None or getattr(model.ImageEmbed, "_realhost_probe", False):
        return
    embed_cls = model.ImageEmbed
    original_eval = embed_cls.eval
    original_hook = plugable.PlugableIPAdapter.hook

    def eval_(self, cond_mark):
        try:
            entry = {
                "call": _unet_calls[0],
                "cond_rows": _rows(self.cond_emb),
                "uncond_rows": _rows(self.uncond_emb),
                "marks": [round(float(m)) for m in cond_mark[:, 0, 0, 0].tolist()],
                "call_rows": int(cond_mark.shape[0]),
            }
            with _lock:
                evals = _record["ip_evals"]
                if evals and {k: v for k, v in evals[-1].items() if k != "layers"} == entry:
                    evals[-1]["layers"] += 1
                else:
                    evals.append({**entry, "layers": 1})
        except Exception as error:
            with _lock:
                _record["errors"].append(f"ip eval: {type(error).__name__}: {error}")
        return original_eval(self, cond_mark)

    original_attn_eval = plugable.PlugableIPAdapter._attn_eval_ipadapter

    def attn_eval(self, hidden_states, query, cond_uncond_image_emb, *args, **kwargs):
        rows, emb_rows = int(hidden_states.shape[0]), int(cond_uncond_image_emb.shape[0])
        if rows != emb_rows:
            with _lock:
                _record["errors"].append(
                    f"ip attention: {rows} rows in the layer, {emb_rows} embedding rows (call {_unet_calls[0]})"
                )
        return original_attn_eval(self, hidden_states, query, cond_uncond_image_emb, *args, **kwargs)

    original_call_ip = plugable.PlugableIPAdapter.call_ip

    def call_ip(self, key, feat, device):
        out = original_call_ip(self, key, feat, device)
        try:
            import torch

            fresh = self.ipadapter.ip_layers.to_kvs[key](feat).to(device)
            if out.shape != fresh.shape or not torch.equal(out, fresh):
                with _lock:
                    _record["errors"].append(
                        f"ip projection {key}: {list(out.shape)} kept from an earlier evaluation, "
                        f"not the projection of this one {list(fresh.shape)} (call {_unet_calls[0]})"
                    )
        except Exception as error:
            with _lock:
                _record["errors"].append(f"ip projection: {type(error).__name__}: {error}")
        return out

    def hook(self, *args, **kwargs):
        out = original_hook(self, *args, **kwargs)
        try:
            emb = self.image_emb
            with _lock:
                _record["ip_hooks"].append(
                    {"cond_rows": _rows(emb.cond_emb), "uncond_rows": _rows(emb.uncond_emb)}
                )
        except Exception as error:
            with _lock:
                _record["errors"].append(f"ip hook: {type(error).__name__}: {error}")
        return out

    original_encode = model.IPAdapterModel.get_image_emb

    def get_image_emb(self, preprocessor_output):
        out = original_encode(self, preprocessor_output)
        try:
            with _lock:
                _record["ip_encodings"].append({"cond_rows": _rows(out.cond_emb)})
        except Exception as error:
            with _lock:
                _record["errors"].append(f"ip encode: {type(error).__name__}: {error}")
        return out

    embed_cls.eval = eval_
    embed_cls._realhost_probe = True
    plugable.PlugableIPAdapter.hook = hook
    plugable.PlugableIPAdapter._attn_eval_ipadapter = attn_eval
    plugable.PlugableIPAdapter.call_ip = call_ip
    model.IPAdapterModel.get_image_emb = get_image_emb
    print("realhost-cn-probe: IP-Adapter patched", flush=True)


def _get_record() -> dict:
    with _lock:
        return {**{k: list(v) for k, v in _record.items()}, "patched": bool(_patched)}


def _reset() -> dict:
    with _lock:
        for value in _record.values():
            value.clear()
    return {"ok": True}


def _routes(_demo, app) -> None:
    _patch()
    _patch_get_control()
    _patch_clip_vision()
    _patch_ip_adapter()
    app.add_api_route("/realhost/cn-record", _get_record, methods=["GET"])
    app.add_api_route("/realhost/cn-record/reset", _reset, methods=["POST"])


_patch()  # ControlNet's scripts load before this one (extensions load sorted by folder name)
_patch_get_control()
_patch_clip_vision()
_patch_ip_adapter()
script_callbacks.on_app_started(_routes)
