"""Host seam for prompt travel and cond/uncond token lengths: per-frame prompt lists on ``p``,
equal-length conditioning, and per-frame interpolated conditioning in ``on_cfg_denoiser``.

The syntax and the maths live in ``motion_module.prompt_travel``; the writes to WebUI objects go
through ``host_changes``. Imports no WebUI module at load. When each public function runs:
- ``prepare_prompts``: in ``before_process``, before the WebUI's ``setup_prompts`` (which turns
  ``p.prompt`` lists into ``p.all_prompts``; ``get_learned_conditioning`` then encodes each
  distinct prompt once, so per-frame lists cost one encode per keyframe).
- ``pad_conditioning``: in ``process_before_every_sampling`` (every pass: txt2img, hires,
  img2img), with its ``c`` and ``uc``: these are the very lists the sampler will read.
- ``on_cfg_denoiser``: from the ``on_cfg_denoiser`` callback, on every denoiser call of the job
  (with or without travel: it also equalises cond/uncond lengths).
- ``restore_infotext_prompts``: in ``postprocess_batch_list``, so saved frames and the infotext
  carry the user's multi-line prompt instead of the composed per-frame prompt.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from motion_module.params import AnimateDiffParams, TravelCurve, TravelInterpolation
from motion_module.prompt_travel import (
    TravelSchedule,
    interpolate_frames,
    pad_tokens,
    plan_videos,
    should_wrap,
)
from motion_module.travel_curves import travel_fractions

from . import host_changes
from .patch_session import PatchSession

log = logging.getLogger("animatediff")

CONTROLNET_MARK = 1024.0  # sd-webui-controlnet prepends a token row of ±1024 to every cond/uncond
_MARK_EPS = 1e-3


@dataclass
class TravelState:
    """Per-job travel data, held by the job: schedules per video, the original prompts for the
    infotext, and the interpolation cache of the current pass."""

    positive: tuple[TravelSchedule, ...] | None
    negative: tuple[TravelSchedule, ...] | None
    hr_positive: tuple[TravelSchedule, ...] | None
    hr_negative: tuple[TravelSchedule, ...] | None
    original_prompts: list[str]
    original_negative_prompts: list[str]
    wrap: bool
    mode: TravelInterpolation
    curve: TravelCurve = TravelCurve.LINEAR  # how the weight moves between two keyframes
    curve_args: str = ""
    energy: Any = None  # the audio's energy per frame, for the audio curve
    cache: dict[tuple, tuple[list[Any], Any]] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)

    def schedule(self, negative: bool, video: int, hires: bool) -> TravelSchedule | None:
        """The schedule of one side for one video; a hires pass uses its own prompt's schedule
        when the user gave a separate hires prompt (``()``: that prompt does not travel)."""
        base = self.negative if negative else self.positive
        hr = self.hr_negative if negative else self.hr_positive
        plans = hr if hires and hr is not None else base
        return plans[min(video, len(plans) - 1)] if plans else None


def prepare_prompts(
    p: Any, session: PatchSession, params: AnimateDiffParams, energy: Any = None
) -> TravelState | None:
    """Parse the prompts on ``p`` and, if anything travels, replace them by per-frame lists.

    Raises ``PromptTravelError`` (quoting the bad line) before changing anything. Returns the
    job's travel state, or None when no prompt has keyframes.
    """
    frames, videos = params.frames, int(p.n_iter)
    positive = plan_videos(p.prompt, frames, videos)
    negative = plan_videos(p.negative_prompt, frames, videos)
    hr_positive = hr_negative = None  # None: the hires pass reuses the first pass's prompts
    if getattr(p, "enable_hr", False):
        if getattr(p, "hr_prompt", ""):
            hr_positive = plan_videos(p.hr_prompt, frames, videos) or ()
        if getattr(p, "hr_negative_prompt", ""):
            hr_negative = plan_videos(p.hr_negative_prompt, frames, videos) or ()
    if not (positive or negative or hr_positive or hr_negative):
        return None

    window = params.window
    state = TravelState(
        positive=positive,
        negative=negative,
        hr_positive=hr_positive,
        hr_negative=hr_negative,
        original_prompts=_per_frame(p.prompt, frames * videos),
        original_negative_prompts=_per_frame(p.negative_prompt, frames * videos),
        wrap=should_wrap(window.closed_loop, frames, window.context),
        mode=params.travel_interpolation,
        curve=params.extras.travel_curve,
        curve_args=params.extras.travel_curve_args,
        energy=energy,
    )
    fields = {"prompt": positive, "negative_prompt": negative}
    if getattr(p, "enable_hr", False):  # setup_prompts copies an empty hr prompt from p.prompt
        fields.update(hr_prompt=hr_positive, hr_negative_prompt=hr_negative)
    values = {
        name: [prompt for s in plans for prompt in s.prompts] if plans else getattr(p, name, None)
        for name, plans in fields.items()
        if plans or name.startswith("hr_")
    }
    host_changes.prompts(session, p, values)
    for label, plans in (("prompt", positive), ("negative prompt", negative)):
        if plans:
            log.info("AnimateDiff prompt travel (%s, %s): %s", label, state.mode.value, plans[0].describe())
    return state


def _per_frame(prompt: str | list[str], count: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * count
    prompts = list(prompt)
    return prompts if len(prompts) == count else [x for x in prompts for _ in range(count // len(prompts))]


def pad_conditioning(session: PatchSession, p: Any, c: Any, uc: Any) -> None:
    """Give every scheduled cond in ``c`` (multicond) and ``uc`` one token length, in place.

    Without this, keyframes or negatives of different lengths (75 vs 150 tokens) either crash
    the WebUI's uncond batch or split each step into separate cond and uncond UNet calls, which
    breaks the frame blocks the motion module needs; the user's "Pad prompt/negative prompt"
    setting is not needed. Pads with the empty prompt's embedding (as that setting does), at the
    end, so a ControlNet marker row stays first. The lists are the WebUI's cached objects, so
    every replacement is undone when the session closes.
    """
    slots = _slots(c) + _slots(uc)
    if not slots:
        return
    conds = [holder[i].cond for holder, i in slots]
    lengths = {_tokens(x).shape[-2] for x in conds}
    if len(lengths) == 1:
        return
    padded = pad_tokens(conds, _empty_rows(p))
    for (holder, i), new in zip(slots, padded, strict=True):
        original = holder[i]
        if _tokens(original.cond).shape[-2] == _tokens(new).shape[-2]:
            continue
        host_changes.conditioning_entry(session, holder, i, original._replace(cond=new))
    log.debug("AnimateDiff: padded conditioning from %s to %d tokens", sorted(lengths), max(lengths))


def _slots(conditioning: Any) -> list[tuple[list, int]]:
    """(list, index) of every ScheduledPromptConditioning in a multicond or a list of schedules."""
    if conditioning is None:
        return []
    schedules = []
    if hasattr(conditioning, "batch"):  # MulticondLearnedConditioning
        schedules = [comp.schedules for row in conditioning.batch for comp in row]
    else:  # list[list[ScheduledPromptConditioning]]
        schedules = list(conditioning)
    seen, slots = set(), []
    for schedule in schedules:
        if id(schedule) in seen:  # the WebUI shares one list between identical prompts
            continue
        seen.add(id(schedule))
        slots.extend((schedule, i) for i in range(len(schedule)))
    return slots


def on_cfg_denoiser(state: TravelState | None, params: Any) -> None:
    """Substitute per-frame interpolated conditioning and give cond and uncond one length.

    ``params`` is the WebUI's ``CFGDenoiserParams``; ``text_cond`` rows are frames (one video),
    ``text_uncond`` likewise. The interpolation is cached per (side, video, pass) and recomputed
    only when the keyframe rows change (prompt editing ``[a:b:10]``, refiner), so a sampling pass
    normally interpolates once. With ``AND`` (several cond rows per frame) interpolation is
    skipped with one warning; the per-frame prompts still apply.
    """
    p = getattr(params.denoiser, "p", None)
    pad_rows = _empty_rows(p)
    cond, uncond = params.text_cond, params.text_uncond
    if state is not None and p is not None:
        video, hires = int(getattr(p, "iteration", 0) or 0), bool(getattr(p, "is_hr_pass", False))
        for negative in (False, True):
            schedule = state.schedule(negative, video, hires)
            if schedule is None or len(schedule.keyframes) < 2:
                continue
            if negative:
                uncond = _travel(state, ("negative", video, hires), schedule, uncond, pad_rows)
            else:
                cond = _travel(state, ("positive", video, hires), schedule, cond, pad_rows)
    if _tokens(cond).shape[-2] != _tokens(uncond).shape[-2]:
        cond, uncond = (
            _like(x, y) for x, y in zip((cond, uncond), pad_tokens([cond, uncond], pad_rows), strict=True)
        )
    host_changes.cfg_conditioning(params, cond, uncond)


def _travel(state: TravelState, key: tuple, schedule: TravelSchedule, batch: Any, pad_rows: Any) -> Any:
    rows = _tokens(batch).shape[0]
    if rows != schedule.frames:
        if key[0] not in state.warned:
            state.warned.add(key[0])
            log.warning(
                "AnimateDiff prompt travel: %d %s conditioning rows for %d frames (AND in a prompt?); "
                "frames keep their own prompts without interpolation",
                rows,
                key[0],
                schedule.frames,
            )
        return batch
    keys = [_index(batch, k) for k in schedule.keyframes]
    cached = state.cache.get(key)
    if cached is not None and _same(cached[0], keys):
        return cached[1]
    marked = all(_is_marked(k) for k in keys)
    body = [_drop_first_row(k) for k in keys] if marked else keys
    fractions = None
    if state.curve is not TravelCurve.LINEAR:
        fractions = travel_fractions(
            state.curve.value, state.curve_args, schedule.frames, schedule.keyframes, state.wrap, state.energy
        )
    frames = interpolate_frames(
        body,
        schedule.keyframes,
        schedule.frames,
        wrap=state.wrap,
        mode=state.mode,
        pad_rows=pad_rows,
        fractions=fractions,
    )
    if marked:  # put the ControlNet marker row back in front of every frame
        mark = _tokens(keys[0])[:1]
        frames = _map_tokens(frames, lambda x: torch.cat([mark.expand(x.shape[0], 1, -1), x], dim=1))
    result = _like(batch, frames)
    state.cache[key] = (keys, result)
    return result


def restore_infotext_prompts(p: Any, state: TravelState | None, frames: int, batch_number: int) -> None:
    """Write the original (multi-line) prompts into this batch's infotext prompts."""
    if state is None:
        return
    lo, hi = batch_number * frames, (batch_number + 1) * frames
    styles = getattr(p, "styles", None) or []
    for travels, name, originals, negative in (
        (state.positive, "prompts", state.original_prompts, False),
        (state.negative, "negative_prompts", state.original_negative_prompts, True),
    ):
        if travels:
            texts = [_apply_styles(text, styles, negative) for text in originals[lo:hi]]
            host_changes.infotext_prompts(p, name, texts, lo)


def _apply_styles(text: str, styles: list[str], negative: bool) -> str:
    if not styles:
        return text
    from modules import shared  # WebUI, only at run time

    styler = shared.prompt_styles
    apply = styler.apply_negative_styles_to_prompt if negative else styler.apply_styles_to_prompt
    return apply(text, styles)


# ---------------------------------------------------------------------------------------------
# Small helpers over "tensor or SDXL dict" conditioning


def _tokens(cond: Any) -> torch.Tensor:
    return cond["crossattn"] if isinstance(cond, Mapping) else cond


def _index(batch: Any, row: int) -> Any:
    return {k: v[row] for k, v in batch.items()} if isinstance(batch, Mapping) else batch[row]


def _map_tokens(cond: Any, fn) -> Any:
    return {**cond, "crossattn": fn(cond["crossattn"])} if isinstance(cond, Mapping) else fn(cond)


def _drop_first_row(cond: Any) -> Any:
    return _map_tokens(cond, lambda x: x[1:])


def _like(template: Any, value: Any) -> Any:
    """``value`` in the container type of ``template`` (the WebUI's SDXL ``DictWithShape`` has a
    ``.shape`` the denoiser reads; a plain dict would break it)."""
    if not isinstance(template, Mapping):
        return value
    out = copy.copy(template)
    out.clear()
    out.update(value)
    return out


def _same(old: list[Any], new: list[Any]) -> bool:
    def flat(c: Any) -> list[torch.Tensor]:
        return [c[k] for k in sorted(c)] if isinstance(c, Mapping) else [c]

    if len(old) != len(new) or any(len(flat(o)) != len(flat(n)) for o, n in zip(old, new, strict=True)):
        return False
    pairs = [(a, b) for o, n in zip(old, new, strict=True) for a, b in zip(flat(o), flat(n), strict=True)]
    return all(a.shape == b.shape and torch.equal(a, b) for a, b in pairs)


def _is_marked(cond: Any) -> bool:
    first = _tokens(cond)[0].float()
    return bool((first.abs() - CONTROLNET_MARK).abs().mean() < _MARK_EPS)


def _empty_rows(p: Any) -> torch.Tensor | None:
    """The empty prompt's embedding (77, d), the padding the WebUI's own pad setting uses."""
    model = getattr(p, "sd_model", None)
    empty = getattr(model, "cond_stage_model_empty_prompt", None)
    if isinstance(empty, Mapping):
        empty = empty.get("crossattn")
    return None if empty is None else empty.reshape(-1, empty.shape[-1])
