"""AnimateDiff for the AUTOMATIC1111 WebUI: the entry script.

One short method per WebUI hook, each delegating to ``animatediff_webui.lifecycle``; then the
one-time registrations (settings, callbacks, X/Y/Z axes). The WebUI executes this file with the
extension root first on ``sys.path``; the engine is the ``motion_module`` package beside it.
"""

from __future__ import annotations

import logging
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # imported by tests or tools outside the WebUI's script loader
    sys.path.insert(0, _ROOT)

import motion_module  # noqa: E402

if not os.path.abspath(getattr(motion_module, "__file__", "") or "").startswith(_ROOT + os.sep):
    raise ImportError(
        "AnimateDiff: another extension's 'motion_module' is already loaded "
        f"({getattr(motion_module, '__file__', motion_module)}). Two AnimateDiff extensions cannot run "
        "together: disable the other one (e.g. sd-webui-animatediff) in Extensions → Installed, then "
        "restart the WebUI."
    )

import importlib  # noqa: E402

import gradio as gr  # noqa: E402
from modules import script_callbacks, scripts, shared  # noqa: E402

from scripts.animatediff_webui import args as ad_args  # noqa: E402
from scripts.animatediff_webui import (  # noqa: E402  # noqa: E402
    i2i_batch,
    lifecycle,
    model_choices,
    settings,
    svd_api,
    svd_job,
    svd_tab,
    ui,
    xyz,
)

# ControlNet imports these by module name at run time (docs/host-interface.md): cache them as
# scripts.<name> now, while the extension root is on sys.path.
for _name in ("scripts.animatediff_utils", "scripts.animatediff_i2ibatch", "scripts.animatediff_mm"):
    importlib.import_module(_name)

log = logging.getLogger("animatediff")
if not log.handlers:  # one console line per lifecycle step, like the WebUI's own messages
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class AnimateDiffScript(scripts.Script):
    def title(self):
        return ad_args.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from modules.ui_components import ToolButton

        panel = ui.build(
            gr,
            is_img2img=is_img2img,
            defaults=lifecycle.base_params(),
            model_choices=_model_choices,
            elem_id=self.elem_id,
            tool_button=ToolButton,
        )
        self.infotext_fields = panel.infotext_fields
        self.paste_field_names = panel.paste_field_names
        return panel.components

    def before_process(self, p, *args):
        lifecycle.before_process(p, args, self.is_img2img)

    def process(self, p, *args):
        lifecycle.process(p)

    def before_process_batch(self, p, *args, **kwargs):
        lifecycle.before_process_batch(p)

    def before_hr(self, p, *args):
        lifecycle.before_hr(p)

    def process_before_every_sampling(self, p, *args, **kwargs):
        lifecycle.process_before_every_sampling(p, kwargs.get("c"), kwargs.get("uc"))

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        lifecycle.postprocess_batch_list(p, kwargs.get("batch_number", 0))

    def postprocess_maskoverlay(self, p, ppmo, *args):
        lifecycle.postprocess_maskoverlay(p, ppmo)

    def postprocess(self, p, processed, *args):
        lifecycle.postprocess(p, processed)


def _model_choices() -> list[str]:
    """Files in the motion-module folder that fit the checkpoint loaded (or being loaded)."""
    return model_choices.for_checkpoint(lifecycle.model_folder())


def _refuse_a_second_animatediff() -> None:
    """The old extension (root-level motion_module.py) breaks when it loads after us: say so."""
    try:
        from modules import extensions

        others = [e for e in extensions.active() if os.path.realpath(e.path) != os.path.realpath(_ROOT)]
    except (ImportError, AttributeError):
        return
    for ext in others:
        if os.path.isfile(os.path.join(ext.path, "motion_module.py")):
            log.error(
                "AnimateDiff: the extension %s is another AnimateDiff; the two cannot run together. "
                "Disable one of them in Extensions → Installed and restart the WebUI.",
                ext.name,
            )


def _hook_batch_tab() -> None:
    """Without ControlNet the Batch tab is reached through our own wrapper of its loop."""
    from modules import img2img

    undo = i2i_batch.install_hook(img2img)
    if undo is not None:
        script_callbacks.on_script_unloaded(undo, name="animatediff batch tab")


def _register_xyz_axes() -> None:
    module = xyz.find_xyz_module(scripts.scripts_data)
    if module is not None:
        xyz.register(module)


_refuse_a_second_animatediff()
_hook_batch_tab()
script_callbacks.on_ui_settings(lambda: settings.register(shared, gr), name="animatediff settings")
script_callbacks.on_cfg_denoiser(lifecycle.on_cfg_denoiser, name="animatediff cfg_denoiser")
script_callbacks.on_infotext_pasted(ad_args.expand_pasted, name="animatediff infotext")
script_callbacks.on_script_unloaded(lifecycle.on_script_unloaded, name="animatediff unload")
script_callbacks.on_before_ui(_register_xyz_axes, name="animatediff xyz axes")
# Stable Video Diffusion: its tab, the "Send to SVD" buttons, its API route
script_callbacks.on_ui_tabs(svd_tab.on_ui_tabs, name="animatediff svd tab")
script_callbacks.on_after_component(svd_tab.on_after_component, name="animatediff svd send buttons")
script_callbacks.on_app_started(svd_api.on_app_started, name="animatediff svd api")
script_callbacks.on_script_unloaded(
    lambda: svd_job.forget_model("scripts unloaded"), name="animatediff svd unload"
)
