"""The SVD tab (gradio 3.41, as pinned by WebUI v1.10.1) and the "Send to SVD" buttons.

The tab's fields are the API's keys, and Generate goes through the same parser and job as
``POST /animatediff/v1/svd``. Under the fields, the memory plan of the chosen model, size, frames
and decode chunk, read again from the file's header (no weights) whenever one of them changes; the
frames hint names the chosen model's own count. Results: the video files and then the frames in a gallery (an MP4
or WebM plays in the player ``javascript/animatediff.js`` puts under it), and an info area with
the memory plan and the infotext. The "Send to SVD" buttons sit beside the WebUI's own send
buttons under the txt2img and img2img results and go through the WebUI's paste registry
(``infotext_utils.register_paste_params_button``): the selected image becomes the tab's input
image, and the WebUI calls ``switch_to_animatediff_svd`` (our javascript) to open the tab.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from motion_module.export import API_VIDEO_ORDER
from motion_module.params import ExportFormat
from motion_module.svd.params import SvdParams

from . import failure, host_changes, svd_job
from .settings import SAVE_FORMATS

log = logging.getLogger("animatediff")

TAB_ID = "animatediff_svd"  # the tab's id; element ids start with it
TAB_LABEL = "SVD"
SEND_FROM = ("txt2img", "img2img")  # result areas that get a "Send to SVD" button


@dataclass(frozen=True)
class Field:
    kind: str  # gradio class name
    label: str
    info: str = ""
    args: tuple[tuple[str, Any], ...] = ()


def _f(kind: str, label: str, info: str = "", **args: Any) -> Field:
    return Field(kind, label, info, tuple(args.items()))


# The request's keys (``SvdParams``) in the order Generate passes them, after task id, image, model.
FIELDS: dict[str, Field] = {
    "width": _f("Slider", "Width", minimum=64, maximum=2048, step=8),
    "height": _f("Slider", "Height", minimum=64, maximum=2048, step=8),
    "frames": _f("Number", "Frames", precision=0, minimum=0),  # its hint names the model's count
    "steps": _f("Slider", "Sampling steps", minimum=1, maximum=200, step=1),
    "seed": _f("Number", "Seed", "-1 = random", precision=0, minimum=-1),
    "fps": _f(
        "Slider",
        "FPS",
        "What the model is told (it sees fps - 1), and the video's speed",
        minimum=1,
        maximum=60,
        step=1,
    ),
    "motion_bucket_id": _f(
        "Slider", "Motion bucket id", "More = more motion", minimum=0, maximum=1023, step=1
    ),
    "noise_aug_strength": _f(
        "Slider",
        "Noise augmentation",
        "Noise added to the input image: more moves further from it",
        minimum=0,
        maximum=1,
        step=0.01,
    ),
    "min_guidance": _f(
        "Slider", "Min guidance", "CFG scale at the first frame", minimum=0, maximum=30, step=0.1
    ),
    "max_guidance": _f(
        "Slider", "Max guidance", "CFG scale at the last frame", minimum=0, maximum=30, step=0.1
    ),
    "decode_chunk": _f(
        "Number",
        "Decode chunk",
        "Frames per decoder call; 0 = all at once (most memory)",
        precision=0,
        minimum=0,
    ),
    "formats": _f("CheckboxGroup", "Save format", choices=list(SAVE_FORMATS)),
}
ROWS = (
    ("width", "height"),
    ("frames", "steps"),
    ("seed", "fps"),
    ("motion_bucket_id", "noise_aug_strength"),
    ("min_guidance", "max_guidance"),
    ("decode_chunk",),
    ("formats",),
)


def field_values(params: SvdParams) -> dict[str, Any]:
    """Each field's value in the tab for ``params`` (formats as their names)."""
    values = {key: getattr(params, key) for key in FIELDS}
    values["formats"] = [fmt.value for fmt in params.formats if fmt.value in SAVE_FORMATS]
    return values


@dataclass
class SvdTab:
    image: Any
    model: Any
    fields: dict[str, Any]
    plan: Any
    task_id: Any
    generate: Any
    interrupt: Any
    refresh: Any
    gallery: Any
    info: Any


def build(
    gr: Any,
    *,
    defaults: SvdParams,
    model_choices: Callable[[], list[str]],
    tool_button: Any = None,
) -> SvdTab:
    """Create the tab's components inside the current gradio Blocks and wire its buttons."""
    values = field_values(defaults)
    choices = model_choices()
    button = tool_button or (lambda **kw: gr.Button(size="sm", **kw))
    comps: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            image = gr.Image(label="Input image", type="pil", source="upload", elem_id=f"{TAB_ID}_image")
            with gr.Row():
                model = gr.Dropdown(
                    label="SVD model",
                    choices=choices,
                    value=choices[0] if choices else None,
                    info="SVD (14 frames) and SVD-XT (25 frames) checkpoints in the SVD model folder",
                    elem_id=f"{TAB_ID}_model",
                )
                refresh = button(value="\U0001f504", elem_id=f"{TAB_ID}_refresh")
            for row in ROWS:
                with gr.Row():
                    for key in row:
                        spec = FIELDS[key]
                        kwargs = dict(
                            spec.args, label=spec.label, value=values[key], elem_id=f"{TAB_ID}_{key}"
                        )
                        if key == "frames":
                            kwargs["info"] = svd_job.frames_hint(model.value)
                        elif spec.info:
                            kwargs["info"] = spec.info
                        comps[key] = getattr(gr, spec.kind)(**kwargs)
            plan = gr.HTML(plan_html(plan_values(model.value, values)), elem_id=f"{TAB_ID}_plan")
        with gr.Column():
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{TAB_ID}_interrupt")
                generate = gr.Button("Generate", variant="primary", elem_id=f"{TAB_ID}_generate")
            task_id = gr.Textbox(visible=False, elem_id=f"{TAB_ID}_task_id")
            with gr.Group(elem_id=f"{TAB_ID}_gallery_container"):
                gallery = gr.Gallery(label="Output", show_label=False, columns=4, elem_id=f"{TAB_ID}_gallery")
            info = gr.HTML(elem_id=f"{TAB_ID}_info")
    tab = SvdTab(image, model, comps, plan, task_id, generate, interrupt, refresh, gallery, info)
    _wire(gr, tab, model_choices)
    return tab


def _wire(gr: Any, tab: SvdTab, model_choices: Callable[[], list[str]]) -> None:
    def refresh(current: Any) -> Any:
        svd_job.forget_model("the SVD tab's refresh button")
        names = model_choices()
        return gr.Dropdown.update(choices=names, value=current if current in names else (names or [None])[0])

    tab.refresh.click(fn=refresh, inputs=[tab.model], outputs=[tab.model])

    def model_changed(model: Any, *values: Any) -> tuple[str, Any]:
        """Another model: its plan, and the frames hint with its own count."""
        return show_plan(model, *values), gr.Number.update(info=svd_job.frames_hint(model))

    plan_inputs = [tab.model, *(tab.fields[key] for key in PLAN_KEYS)]
    tab.model.change(fn=model_changed, inputs=plan_inputs, outputs=[tab.plan, tab.fields["frames"]])
    for key in PLAN_KEYS:
        tab.fields[key].change(fn=show_plan, inputs=plan_inputs, outputs=[tab.plan])
    tab.interrupt.click(fn=interrupt, inputs=[], outputs=[])
    tab.generate.click(
        fn=generate,
        _js="animatediff_svd_submit",
        inputs=[tab.task_id, tab.image, tab.model, *(tab.fields[key] for key in FIELDS)],
        outputs=[tab.gallery, tab.info],
        show_progress=False,
    )


# --- the memory plan and the frames hint ------------------------------------------------------

PLAN_KEYS = tuple(key for key in svd_job.PLAN_FIELDS if key != "model")


def plan_values(model: Any, values: dict[str, Any]) -> dict[str, Any]:
    return {"model": model or "", **{key: values[key] for key in PLAN_KEYS}}


def plan_html(values: dict[str, Any]) -> str:
    text = svd_job.plan_preview(values)
    return f"<p class='animatediff-svd-plan'>Memory plan: {html.escape(text)}</p>"


def show_plan(model: Any, *values: Any) -> str:
    """A plan field changed: the plan again (cheap: the header's model is cached)."""
    return plan_html(plan_values(model, dict(zip(PLAN_KEYS, values, strict=True))))


def interrupt() -> None:
    from modules import shared

    host_changes.svd_interrupt(shared.state)


def generate(task_id: Any, image: Any, model: Any, *values: Any) -> tuple[list[Any], str]:
    """Generate: the tab's values through the API's parser and job; the message on failure."""
    request = dict(zip(FIELDS, values, strict=True)) | {"image": image, "model": model or ""}
    task = str(task_id or "") or None
    try:
        params, picture = svd_job.parse_request(request)
        outcome = svd_job.run(params, picture, task_id=task)
    except Exception as error:
        message = failure.describe(error)
        message = message if message.startswith("SVD") else f"SVD: {message}"
        log.error("%s", message, exc_info=failure.status(error) == 500)
        if task:  # refused before the job started: the page's progress bar stops waiting
            svd_job.finish_task(task)
        return [], f"<p class='animatediff-svd-error'>{html.escape(message)}</p>"
    return gallery_items(outcome), info_html(outcome)


def gallery_items(outcome: svd_job.SvdOutcome) -> list[Any]:
    """The videos (file paths, GIF/WebP animate, MP4/WebM go to the player), then the frames."""
    paths = outcome.export.paths if outcome.export is not None else {}
    return [str(paths[fmt]) for fmt in API_VIDEO_ORDER if fmt in paths] + list(outcome.frames)


def info_html(outcome: svd_job.SvdOutcome) -> str:
    lines = [outcome.info, f"Memory plan: {outcome.plan}"]
    if outcome.interrupted and not outcome.frames:
        lines.append("Interrupted before the first step finished: nothing was saved.")
    if outcome.export is not None:
        lines += list(outcome.export.errors.values())
        written = [str(path) for fmt, path in outcome.export.paths.items() if fmt is not ExportFormat.FRAME]
        if written:
            lines.append("Saved: " + ", ".join(written))
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


# --- registration with the WebUI ------------------------------------------------------------

# The result galleries and "Send to SVD" buttons of the UI being built (rebuilt by Reload UI,
# which overwrites them), connected once the tab exists.
_send_buttons: dict[str, tuple[Any, Any]] = {}


def on_after_component(component: Any, **_kwargs: Any) -> None:
    """Beside each result area's "Send to extras" button, a "Send to SVD" button."""
    elem_id = getattr(component, "elem_id", None)
    for source in SEND_FROM:
        if elem_id == f"{source}_gallery":
            _send_buttons[source] = (component, None)
        elif elem_id == f"{source}_send_to_extras" and source in _send_buttons:
            from modules.ui_components import ToolButton

            button = ToolButton(
                "\U0001f39e\ufe0f",  # film frames
                elem_id=f"{source}_send_to_{TAB_ID}",
                tooltip="Send image to the SVD tab (image to video).",
            )
            _send_buttons[source] = (_send_buttons[source][0], button)


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    import gradio as gr
    from modules import infotext_utils
    from modules.ui_components import ToolButton

    with gr.Blocks(analytics_enabled=False) as blocks:
        tab = build(
            gr, defaults=svd_job.base_params(), model_choices=svd_job.model_choices, tool_button=ToolButton
        )
    infotext_utils.add_paste_fields(TAB_ID, tab.image, None)
    for gallery, button in _send_buttons.values():
        if button is not None:
            infotext_utils.register_paste_params_button(
                infotext_utils.ParamBinding(
                    paste_button=button, tabname=TAB_ID, source_image_component=gallery
                )
            )
    return [(blocks, TAB_LABEL, TAB_ID)]
