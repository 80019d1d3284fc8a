"""Every change AnimateDiff makes to a WebUI object, in one place, each with its exact undo.

Read this file top to bottom to know what a job does to the host. The seams (conditioning,
img2vid, denoiser, output, ...) compute values; only the functions here write them. Two kinds:

- **Steps** change an object the WebUI keeps using (the processing object ``p``, the model, the
  sampler's denoiser, ``shared.state``). Each runs through the job's ``PatchSession``: its undo is
  registered before the next step starts and runs, newest first, when the job closes, also after
  an exception or an Interrupt. ``STEPS`` names them all, with the attributes they write.
- **Results** fill objects the WebUI hands over to be filled and then discards or shows: the
  per-call ``CFGDenoiserParams``, the ``Processed`` result, the infotext of the batch being saved,
  X/Y/Z override dicts on a grid cell's copy of ``p``. They are not undone, as the WebUI's own
  writes to them are not. ``RESULTS`` names them.
- **For the extension's lifetime**: one wrapper installed when the extension loads and removed
  when its scripts unload. ``LIFETIME`` names it.
- **Per call** writes last one windowed UNet call: a window's slice of ControlNet's hints, put
  back by the windowed denoiser as soon as the call returns. ``PER_CALL`` names them.
- **SVD jobs** (the SVD tab and its API route) are no WebUI processing: they put themselves on
  the WebUI's progress bar as its own API does (``state.begin`` ... ``state.end``, a step of their
  session), count their steps there, and the tab's Interrupt button calls ``state.interrupt``.
  ``SVD`` names them.

``tests/test_host_changes.py`` runs whole jobs against recording fakes and checks both lists; it
also greps the adapter so that no other file writes to a WebUI object.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from motion_module import injection as mm_injection

from .patch_session import PatchSession

log = logging.getLogger("animatediff")

_MISSING = object()


@dataclass(frozen=True)
class Change:
    name: str  # the step name in the session (and in logs)
    writes: tuple[str, ...]  # "object.attribute" it writes; "[]" for items of a list or dict


STEPS: tuple[Change, ...] = (
    Change("job on p", ("p.animatediff_job",)),
    Change("p.sample and p.close know the job", ("p.__class__",)),
    Change("one video per batch", ("p.batch_size", "p.do_not_save_grid", "p.do_not_save_samples")),
    Change(
        "prompt travel: per-frame prompts",
        ("p.prompt", "p.negative_prompt", "p.hr_prompt", "p.hr_negative_prompt"),
    ),
    Change("ControlNet view on p", ("p.animatediff_cn_view",)),
    Change("ControlNet units take the video", ("p.script_args",)),
    Change("init images per frame", ("p.init_images",)),
    Change(
        "per-frame inpaint masks",
        (
            "p.init_latent",
            "p.mask",
            "p.nmask",
            "p.image_conditioning",
            "p.overlay_images",
            "p.mask_for_overlay",
            "p.color_corrections",
        ),
    ),
    Change("SparseCtrl frame layout", ("animatediff_mm.current_layout[]",)),
    Change(
        "IP-Adapter embeddings per frame through ControlNet",
        ("controlnet_script_globals[]", "IPAdapterModel.get_image_emb"),
    ),
    Change(
        "inject motion module",
        ("unet.input_blocks[]", "unet.middle_block[]", "unet.output_blocks[]", "unet layer.forward"),
    ),
    Change("beta schedule", ("sd_model.alphas_cumprod", "sd_model.alphas_cumprod_original")),
    Change(
        "Lora layer names",
        ("sd_model.network_layer_mapping[]", "linear.__class__", "linear.network_layer_name"),
    ),
    Change("Lora networks re-read", ("network.mtime",)),
    Change("Lora files read through the motion-LoRA converter", ("networks.sd_models", "network.mtime")),
    Change("equal-length conditioning", ("conds[]",)),
    Change("windowed denoiser", ("inner_model.forward",)),
    Change("img2vid start latents", ("p.init_latent",)),
    Change("interrupt sampling", ("state.interrupted",)),
    Change("light live previews", ("state.do_set_current_image",)),
    Change("FreeInit phases", ("state.job_count",)),
    Change("next progress phase", ("state.job_no", "state.textinfo")),
    Change("export phase", ("state.job_count",)),
    Change(
        "stop the job",
        ("p.setup_prompts", "p.init", "p.sample", "p.close", "sampler.sample", "sampler.sample_img2img"),
    ),
)
RESULTS: tuple[Change, ...] = (
    Change("infotext entry", ("p.extra_generation_params[]",)),
    Change(
        "infotext prompts", ("p.prompts", "p.negative_prompts", "p.all_prompts[]", "p.all_negative_prompts[]")
    ),
    Change("per-frame conditioning", ("cfg_params.text_cond", "cfg_params.text_uncond")),
    Change("progress text", ("state.textinfo",)),
    Change(
        "video results",
        ("processed.images", "processed.infotexts", "processed.index_of_first_image", "processed.comments"),
    ),
    Change("X/Y/Z override", ("p.animatediff_xyz",)),
    Change("ControlNet view before the job", ("p.animatediff_cn_view",)),
    Change(
        "img2img Batch tab as one video",  # what the WebUI's own Batch tab writes on its request's p
        (
            "p.init_images",
            "p.width",
            "p.height",
            "p.image_mask",
            "p.outpath_samples",
            "p.override_settings",
            "p.prompt",
            "p.negative_prompt",
            "p.seed",
            "p.cfg_scale",
            "p.steps",
            "p.sampler_name",
            "p.animatediff_i2i_batch_folder",
            "p.animatediff_inpaint_masks",
        ),
    ),
    Change("per-frame overlay mask", ("overlay_args.mask_for_overlay",)),
    Change("ControlNet hints kept on the CPU", ("control.hint_cond", "control.hr_hint_cond")),
)
LIFETIME: tuple[Change, ...] = (Change("img2img Batch tab hook", ("img2img.process_batch",)),)
PER_CALL: tuple[Change, ...] = (
    Change(
        "ControlNet hints per window",
        ("control.hint_cond", "control.hr_hint_cond", "ip_adapter.image_emb", "unet_model.cond_mark"),
    ),
    Change("IP-Adapter projections dropped", ("ip_adapter.cache",)),
    Change("one sampling pass", ("p.rng", "p.steps", "p.enable_hr", "p.mask", "p.nmask")),
    Change(
        "one frame's img2img init", ("p.init_images", "p.image_mask", "p.batch_size", "p.color_corrections")
    ),
    Change("preview strip", ("state.current_latent",)),
)
SVD: tuple[Change, ...] = (
    Change(  # the WebUI's state.begin resets its flags and counters as for any job
        "SVD job on the progress bar",
        ("state.job", "state.job_count", "state.job_no", "state.sampling_steps", "state.textinfo"),
    ),
    Change("SVD step on the progress bar", ("state.sampling_step", "state.sampling_steps", "state.textinfo")),
    Change("SVD stage on the progress bar", ("state.textinfo",)),
    Change("SVD Interrupt button", ("state.interrupted",)),
)
_NAMES = {change.name for change in STEPS + SVD}


def _step(session: PatchSession, name: str, apply: Callable[[], Any], undo: Callable[..., None]) -> Any:
    assert name in _NAMES, f"{name!r} is not in the catalogue"
    return session.step(name, apply, undo)


def _own(obj: Any, key: str) -> Any:
    """The value ``obj`` holds itself (not through its class), or ``_MISSING``. An ``nn.Module``
    keeps tensors it registered in its own tables, everything else in ``__dict__``."""
    if isinstance(obj, torch.nn.Module):
        for table in (obj._parameters, obj._buffers, obj._modules):
            if key in table:
                return table[key]
    return vars(obj).get(key, _MISSING)


def _set_attr(session: PatchSession, name: str, obj: Any, values: dict[str, Any]) -> None:
    """Set attributes of ``obj``; the undo puts back each old value, or removes an attribute the
    object did not hold itself (so a method of its class shows through again)."""
    saved = {key: _own(obj, key) for key in values}

    def apply() -> None:
        for key, value in values.items():
            setattr(obj, key, value)

    _step(session, name, apply, lambda: _restore(obj, saved))


def _restore(obj: Any, saved: dict[str, Any]) -> None:
    for key, old in saved.items():
        if old is not _MISSING:
            setattr(obj, key, old)
        elif _own(obj, key) is not _MISSING:
            delattr(obj, key)


# --- the processing object p -----------------------------------------------------------------


def tag_job(session: PatchSession, p: Any, attr: str, job: Any) -> None:
    """The job rides on its ``p`` so every hook finds it."""
    _set_attr(session, "job on p", p, {attr: job})


def subclass_processing(session: PatchSession, p: Any, make_class: Callable[[type], type]) -> None:
    """Give ``p`` a subclass (``make_class(base)``); undone only while ``p`` still has it."""
    base = type(p)
    cls = make_class(base)

    def apply() -> None:
        p.__class__ = cls

    def undo() -> None:
        if type(p) is cls:
            p.__class__ = base

    _step(session, "p.sample and p.close know the job", apply, undo)


def video_batch(session: PatchSession, p: Any, frames: int, *, webui_saves_frames: bool) -> None:
    """One video per batch: the WebUI samples ``frames`` images together; no grid, and the frames
    are saved by the WebUI only when it is to write the PNG frames itself."""
    values: dict[str, Any] = {"batch_size": frames, "do_not_save_grid": True}
    if not webui_saves_frames:
        values["do_not_save_samples"] = True
    _set_attr(session, "one video per batch", p, values)


def prompts(session: PatchSession, p: Any, values: dict[str, Any]) -> None:
    """Per-frame prompt lists (prompt travel), read later by the WebUI's ``setup_prompts``."""
    _set_attr(session, "prompt travel: per-frame prompts", p, values)


def controlnet_view(session: PatchSession, p: Any, attr: str, view: Any) -> None:
    """The object ControlNet reads our settings from; it writes on it, so it lives on ``p``."""
    _set_attr(session, "ControlNet view on p", p, {attr: view})


def controlnet_units(session: PatchSession, p: Any, script_args: tuple) -> None:
    """ControlNet's arguments with the routed units in batch mode over the video's frames."""
    _set_attr(session, "ControlNet units take the video", p, {"script_args": script_args})


def init_images(session: PatchSession, p: Any, images: list[Any]) -> None:
    """img2img with one init image per frame, cut to the video's frames."""
    _set_attr(session, "init images per frame", p, {"init_images": images})


def sparsectrl_layout(session: PatchSession, layout: Any) -> None:
    """SparseCtrl's motion modules (built by ControlNet through ``scripts.animatediff_mm``) read
    the running job's frame layout from there."""
    holder = sys.modules.get("scripts.animatediff_mm")
    current = getattr(holder, "current_layout", None)
    if not isinstance(current, list):
        return
    _step(session, "SparseCtrl frame layout", lambda: current.append(layout), lambda: current.remove(layout))


def ip_adapter_per_frame(
    session: PatchSession,
    script_globals: dict[str, Any],
    adapter_cls: type,
    embedding_cls: type,
    to_image_embed: Callable[[Any], Any],
) -> None:
    """For the job, ControlNet's script makes its per-frame IP-Adapter embedding as an
    ``embedding_cls`` (its ``ImageEmbed`` name in ``script_globals``), and its IP-Adapter takes
    such an embedding as it is (``adapter_cls.get_image_emb`` returns ``to_image_embed(it)``)
    instead of encoding it again. Every other input goes to ControlNet's own method."""
    original = adapter_cls.get_image_emb

    def get_image_emb(self: Any, preprocessor_output: Any) -> Any:
        if isinstance(preprocessor_output, embedding_cls):
            return to_image_embed(preprocessor_output)
        return original(self, preprocessor_output)

    def apply() -> tuple[Any, Any]:
        saved = (script_globals.get("ImageEmbed", _MISSING), _own(adapter_cls, "get_image_emb"))
        script_globals["ImageEmbed"] = embedding_cls
        adapter_cls.get_image_emb = get_image_emb
        return saved

    def undo(saved: tuple[Any, Any]) -> None:
        name, method = saved
        if name is not _MISSING:
            script_globals["ImageEmbed"] = name
        _restore(adapter_cls, {"get_image_emb": method})

    _step(session, "IP-Adapter embeddings per frame through ControlNet", apply, undo)


def img2vid_latents(session: PatchSession, p: Any, latents: torch.Tensor) -> None:
    """This batch's per-frame start latents; each batch's undo restores the one before it, so
    closing the job gives the WebUI back its own encoded init image."""
    _set_attr(session, "img2vid start latents", p, {"init_latent": latents})


# --- the model -----------------------------------------------------------------------------


def load_pending_weights(sd_models: Any, devices: Any) -> bool:
    """Let the WebUI reload its checkpoint's weights now if it would at the start of the first
    batch: a request's ``override_settings`` may switch FP8 weight storage, which the WebUI
    applies there by reloading the weights into the same model object. That reload walks every
    module of the model, so with the motion module already injected it would cast the motion
    module (to half, to FP8) and rename its layers for the Lora extension. Reloaded here, before
    the injection, the WebUI's own call finds nothing to do. Nothing to undo: it is the WebUI's
    own reload, and it reloads again when the setting goes back. True if it reloaded."""
    model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    check = getattr(sd_models, "check_fp8", None)
    if model is None or check is None or bool(check(model)) == bool(getattr(devices, "fp8", False)):
        return False
    log.info("AnimateDiff: the WebUI switches FP8 weight storage for this job; reloading its weights first")
    sd_models.reload_model_weights()
    return True


def inject(session: PatchSession, unet: Any, loaded: Any, layout: Any, base: str) -> Any:
    """Motion blocks into the UNet's blocks, and on its other layers either the GroupNorm variant
    the family needs or the chunked forward of motion-module-window sampling."""
    return _step(
        session,
        "inject motion module",
        lambda: mm_injection.inject(unet, loaded, layout, base),
        lambda injection: injection.remove(),
    )


def beta_schedule(session: PatchSession, sd_model: Any, alphas: torch.Tensor) -> None:
    """The family's ``alphas_cumprod``, and its ``_original`` twin, which the WebUI copies back
    into the first before every batch."""
    new = alphas.to(device=sd_model.alphas_cumprod.device, dtype=sd_model.alphas_cumprod.dtype)
    _set_attr(session, "beta schedule", sd_model, {"alphas_cumprod": new, "alphas_cumprod_original": new})


def lora_layer_names(session: PatchSession, sd_model: Any, layers: dict[str, torch.nn.Module]) -> None:
    """Make the builtin Lora extension find the motion Linears: each under its name in
    ``network_layer_mapping`` and with that ``network_layer_name``; typed exactly ``nn.Linear``
    for the job, because its LoRA loader accepts no subclass."""
    mapping = sd_model.network_layer_mapping

    def apply() -> Callable[[], None]:
        previous = {key: mapping.get(key, _MISSING) for key in layers}
        classes = [
            (m, type(m))
            for m in layers.values()
            if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear
        ]
        had_name = {id(m): m.__dict__.get("network_layer_name", _MISSING) for m in layers.values()}
        for module, _cls in classes:
            module.__class__ = torch.nn.Linear
        for key, module in layers.items():
            mapping[key] = module
            module.network_layer_name = key

        def undo() -> None:
            for module in layers.values():
                old = had_name[id(module)]
                if old is _MISSING:
                    module.__dict__.pop("network_layer_name", None)
                else:
                    module.network_layer_name = old
            for module, cls in reversed(classes):
                module.__class__ = cls
            for key, old in previous.items():
                if old is _MISSING:
                    mapping.pop(key, None)
                else:
                    mapping[key] = old

        return undo

    _step(session, "Lora layer names", apply, lambda undo: undo())


def reread_lora_networks(session: PatchSession) -> None:
    """Make the builtin Lora extension read this job's LoRAs again: one it read while no motion
    layer was registered matched none of them and would leave a motion LoRA out, silently. It
    re-reads a network whose file is newer than the network's ``mtime``; the undo gives the
    networks still cached their own ``mtime`` back."""
    networks = sys.modules.get("networks")  # the builtin Lora extension's module
    cached = [getattr(networks, n, None) for n in ("loaded_networks", "networks_in_memory")]
    if not isinstance(cached[0], list) or not isinstance(cached[1], dict):
        return
    nets = list({id(net): net for net in [*cached[0], *cached[1].values()]}.values())

    def apply() -> list[tuple[Any, Any]]:
        saved = [(net, net.mtime) for net in nets]
        for net in nets:
            net.mtime = float("-inf")
        return saved

    def undo(saved: list[tuple[Any, Any]]) -> None:
        for net, mtime in saved:
            net.mtime = mtime

    _step(session, "Lora networks re-read", apply, undo)


class _ConvertingReader:
    """Stands in for the WebUI's ``sd_models`` module inside the Lora extension, which uses it
    only to read LoRA files: ``read_state_dict`` passes what it read through ``convert``; every
    other attribute is the module's own. Inert once ``active`` is False."""

    def __init__(self, module: Any, convert: Callable[[str, Any], Any]):
        self.module = module
        self.convert = convert
        self.active = True
        self.converted: set[str] = set()

    def read_state_dict(self, filename: str, *args: Any, **kwargs: Any) -> Any:
        state_dict = self.module.read_state_dict(filename, *args, **kwargs)
        if not self.active:
            return state_dict
        result = self.convert(filename, state_dict)
        if result is not state_dict:
            self.converted.add(filename)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def lora_file_reading(session: PatchSession, convert: Callable[[str, Any], Any]) -> None:
    """The builtin Lora extension reads each LoRA file of this job through ``convert(filename,
    state_dict)`` (``lora_files.converter``: motion-LoRA and adapter keys renamed, a file that
    fits nothing refused). It reads with ``sd_models.read_state_dict``, named in its own module,
    so that one name is replaced for the job. The undo puts the module back (if another extension
    replaced it since, ours stays in its chain, inert) and marks the networks read through the
    converter out of date, so the WebUI reads those files itself next time."""
    networks = sys.modules.get("networks")  # the builtin Lora extension's module
    original = getattr(networks, "sd_models", None)
    if original is None or not callable(getattr(original, "read_state_dict", None)):
        return
    reader = _ConvertingReader(original, convert)

    def apply() -> None:
        networks.sd_models = reader

    def undo() -> None:
        reader.active = False
        if vars(networks).get("sd_models") is reader:
            networks.sd_models = original
        cached = [
            *getattr(networks, "loaded_networks", []),
            *getattr(networks, "networks_in_memory", {}).values(),
        ]
        for net in cached:
            if getattr(getattr(net, "network_on_disk", None), "filename", None) in reader.converted:
                net.mtime = float("-inf")

    _step(session, "Lora files read through the motion-LoRA converter", apply, undo)


# --- sampling --------------------------------------------------------------------------------


def conditioning_entry(session: PatchSession, holder: list, index: int, value: Any) -> None:
    """One entry of the WebUI's cached conditioning lists, replaced (token padding)."""
    original = holder[index]
    _step(
        session,
        "equal-length conditioning",
        lambda: holder.__setitem__(index, value),
        lambda: holder.__setitem__(index, original),
    )


def denoiser_forward(session: PatchSession, inner: Any, forward: Any, on_undo: Callable[[], None]) -> None:
    """``inner.forward`` of the sampler's model wrapper replaced on the instance. ``on_undo`` runs
    first (it makes ``forward`` a pass-through). If another extension replaced our forward after
    us, ours stays in its chain (removing it would cut theirs) and only goes inert."""
    had_own = "forward" in inner.__dict__
    current = inner.__dict__.get("forward")

    def apply() -> None:
        inner.forward = forward

    def undo() -> None:
        on_undo()
        if inner.__dict__.get("forward") is not forward:
            log.warning(
                "AnimateDiff: %s.forward was replaced after ours; our window wrapper stays in its "
                "chain as a pass-through",
                type(inner).__name__,
            )
        elif had_own:
            inner.forward = current
        else:
            del inner.forward

    _step(session, "windowed denoiser", apply, undo)


PREVIEW_FRAMES = 4


def light_previews(session: PatchSession, state: Any, frames: int = PREVIEW_FRAMES) -> None:
    """Live previews decode a strip of the first ``frames`` frames, not the whole video: the
    WebUI decodes every latent of the batch into a grid (its default "show progress grid"), a
    cost that grows with the video. For the call, the latent it decodes is the strip."""
    original = getattr(state, "do_set_current_image", None)
    if original is None:
        return

    def preview() -> Any:
        latent = state.current_latent
        if latent is None or latent.shape[0] <= frames:
            return original()
        state.current_latent = latent[:frames]
        try:
            return original()
        finally:
            state.current_latent = latent

    _set_attr(session, "light live previews", state, {"do_set_current_image": preview})


def interrupt(session: PatchSession, state: Any) -> None:
    """Stop the sampler at its next step (a callback cannot raise: the WebUI swallows it)."""
    _set_attr(session, "interrupt sampling", state, {"interrupted": True})


def more_jobs(session: PatchSession, name: str, state: Any, count: int) -> None:
    """``count`` more jobs on the progress bar (FreeInit's extra iterations, the export). Added
    once the WebUI has counted its own (after ``p.init``), so progress only grows; the undo takes
    away just these, so the WebUI's counting during the job (an X/Y/Z grid's) stands."""

    def apply() -> None:
        state.job_count = int(state.job_count or 0) + count

    def undo() -> None:
        state.job_count = int(state.job_count or 0) - count

    _step(session, name, apply, undo)


def next_phase(session: PatchSession, state: Any, text: str) -> None:
    """One of those jobs starts (``nextjob``) under ``text``; undone the same relative way."""
    saved = state.textinfo

    def apply() -> None:
        state.nextjob()
        state.textinfo = text

    def undo() -> None:
        state.job_no = int(state.job_no or 0) - 1
        state.textinfo = saved

    _step(session, "next progress phase", apply, undo)


@contextmanager
def _for_one_call(p: Any, values: dict[str, Any]) -> Iterator[None]:
    saved = {key: _own(p, key) for key in values}
    for key, value in values.items():
        setattr(p, key, value)
    try:
        yield
    finally:
        _restore(p, saved)


def sampling_pass(p: Any, values: dict[str, Any]) -> Any:
    """Attributes of ``p`` for one call of the WebUI's ``p.sample`` (the noise generator, the
    step count, hires fix and the inpaint mask of one FreeInit iteration); put back after it."""
    return _for_one_call(p, values)


def one_frame_init(p: Any, values: dict[str, Any]) -> Any:
    """Attributes of ``p`` for one call of the WebUI's img2img ``init`` on a single frame (its
    init image, its inpaint mask, a batch of one, no colour correction yet); put back after it."""
    return _for_one_call(p, values)


def per_frame_inpaint(session: PatchSession, p: Any, values: dict[str, Any]) -> None:
    """What the WebUI's img2img ``init`` made, joined frame by frame from one run per frame:
    latent masks ``(F, C, h, w)``, start latents, image conditioning, overlays and colour
    corrections per frame. Undone when the job closes (after the last batch was pasted back)."""
    _set_attr(session, "per-frame inpaint masks", p, values)


def stop_the_job(session: PatchSession, p: Any, error: BaseException) -> None:
    """Make the next step the WebUI takes outside the hooks raise ``error``: the WebUI swallows
    exceptions raised in script hooks and would run on, making N unrelated stills.

    Those steps are the prompt setup (before ``process``), ``p.init`` (after it), ``p.sample``,
    or the sampler itself when the failure happened inside ``p.sample``. The WebUI calls
    ``p.close()`` last even after the error; that closes ``session`` and so removes every raiser.
    """

    def raiser(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    def close(*args: Any, **kwargs: Any) -> Any:
        try:
            session.close()
        finally:
            type(p).close(p, *args, **kwargs)

    values = dict.fromkeys(("setup_prompts", "init", "sample"), raiser) | {"close": close}
    _set_attr(session, "stop the job", p, values)
    sampler = getattr(p, "sampler", None)
    if sampler is not None:
        _set_attr(session, "stop the job", sampler, dict.fromkeys(("sample", "sample_img2img"), raiser))


def hint_on_cpu(control: Any, name: str, hint: torch.Tensor) -> torch.Tensor:
    """One ControlNet control's per-frame hint (``hint_cond`` or ``hr_hint_cond``) moved to the
    CPU, where it stays; windowed calls move their rows to the device. Not undone: the values
    are the same, ControlNet builds new controls for every job, and moving it back would put
    the whole video's hints on the device again. Returns the hint as the control now holds it."""
    if hint.device.type == "cpu":
        return hint
    parked = hint.to("cpu")
    setattr(control, name, parked)
    log.info(
        "AnimateDiff: ControlNet's %s %s kept on the CPU; windows take their rows", name, tuple(hint.shape)
    )
    return parked


def window_hint(control: Any, name: str, value: Any) -> None:
    """One ControlNet control's hint (``hint_cond`` or ``hr_hint_cond``, or an IP-Adapter's
    ``image_emb``, or the cond marks ControlNet keeps on the UNet model) for one windowed call or
    one chunk of rows; the windowed denoiser writes the full one back when the call or chunk
    returns."""
    setattr(control, name, value)


def ip_adapter_projections_cleared(adapter: Any) -> None:
    """A ControlNet IP-Adapter's projections of its image embedding (``cache``: one key and
    value tensor per attention layer, made on first use and kept for the job) dropped, so that
    the next evaluation projects the rows it gets now. Not undone: it is a cache, rebuilt on
    demand."""
    adapter.cache = {}


# --- results -----------------------------------------------------------------------------------


def infotext_entry(p: Any, key: str, value: str) -> None:
    extra = getattr(p, "extra_generation_params", None)
    if isinstance(extra, dict):
        extra[key] = value


def infotext_prompts(p: Any, name: str, texts: list[str], lo: int) -> None:
    """This batch's prompts as the infotext shows them (``name``: prompts or negative_prompts)."""
    setattr(p, name, texts)
    every = getattr(p, "all_" + name, None)
    if isinstance(every, list):
        every[lo : lo + len(texts)] = texts


def progress_text(state: Any, text: str) -> None:
    """What the progress bar says (the WebUI rewrites it at every job and step)."""
    state.textinfo = text


def cfg_conditioning(cfg_params: Any, cond: Any, uncond: Any) -> None:
    cfg_params.text_cond, cfg_params.text_uncond = cond, uncond


def video_results(processed: Any, images: list[Any] | None, infotexts: list[str] | None, note: str) -> None:
    """What the gallery or the API shows (``images`` None: keep the frames), and export problems."""
    if note:
        comments = getattr(processed, "comments", "")
        processed.comments = f"{comments}\n{note}".strip() if comments else note
    if images is not None:
        processed.images, processed.infotexts = images, infotexts
        processed.index_of_first_image = 0


def controlnet_view_before_job(p: Any, attr: str, view: Any) -> None:
    """ControlNet's img2img Batch tab asks for our settings on a ``p`` no job has started on yet,
    marks the answer (``is_i2i_batch``) and expects to read the mark later on that ``p``."""
    setattr(p, attr, view)


def batch_tab_video(p: Any, values: dict[str, Any]) -> None:
    """The Batch tab's request set up as one video: every image an init image, and the options
    the WebUI's own Batch tab applies (output folder, scale, mask, PNG info)."""
    for key, value in values.items():
        setattr(p, key, value)


def frame_overlay_mask(overlay_args: Any, mask: Any) -> None:
    """The WebUI's ``PostProcessMaskOverlayArgs`` for one image: its frame's overlay mask."""
    overlay_args.mask_for_overlay = mask


def batch_tab_hook(img2img_module: Any, hook: Any, original: Any) -> Callable[[], None]:
    """``process_batch`` wrapped for the extension's lifetime; the undo puts the original back
    unless another extension wrapped ours since (then ours stays in its chain and passes on)."""
    img2img_module.process_batch = hook

    def undo() -> None:
        if img2img_module.process_batch is hook:
            img2img_module.process_batch = original

    return undo


def xyz_override(p: Any, attr: str, key: str, value: Any) -> None:
    """An X/Y/Z axis value on a grid cell's copy of ``p``; a new dict, since cells share one."""
    setattr(p, attr, {**(getattr(p, attr, None) or {}), key: value})


# --- SVD jobs ----------------------------------------------------------------------------------


def svd_job(session: PatchSession, state: Any, job: str, steps: int) -> None:
    """An SVD job on the WebUI's progress bar (and ``/sdapi/v1/progress``): ``state.begin``, as
    the WebUI's API does for each of its jobs (it also clears Interrupt and Skip), one job of
    ``steps`` steps; the undo is ``state.end``, as there."""

    def apply() -> None:
        state.begin(job=job)
        state.job_count = 1
        state.sampling_steps = steps
        state.textinfo = "SVD: preparing"

    _step(session, "SVD job on the progress bar", apply, state.end)


def svd_step(state: Any, done: int, total: int, text: str) -> None:
    """One sampling step done (the WebUI's samplers write the same fields every step); ``text``
    is the progress bar's line."""
    state.sampling_step = done
    state.sampling_steps = total
    state.textinfo = text


def svd_status(state: Any, text: str) -> None:
    """The progress bar's line while the job loads, encodes, starts sampling or decodes
    (``/sdapi/v1/progress`` returns it as ``textinfo``)."""
    state.textinfo = text


def svd_interrupt(state: Any) -> None:
    """The SVD tab's Interrupt button: the WebUI's own interrupt, read by the job's should_stop."""
    state.interrupt()
