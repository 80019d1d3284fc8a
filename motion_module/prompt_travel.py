"""Prompt travel: keyframed prompts -> per-frame prompt lists -> per-frame interpolated conditioning.

Owns the prompt syntax (head lines, ``frame: text`` keyframes, tail lines; also the JSON-style
``"0": "text",`` lines ComfyUI users paste), the frozen ``TravelSchedule``, and the slerp/linear
interpolation of encoded conditioning between keyframes. Imports nothing from the WebUI: the
adapter (``scripts/animatediff_webui/conditioning.py``) feeds it strings and tensors.

Syntax decisions (each bad input is either accepted the obvious way or refused with the line):
- keyframes out of order: accepted, sorted by frame;
- ``5:text`` (no space), ``5 : text``, ``"5": "text",``: accepted;
- blank lines and lines that are only ``{`` or ``}``: ignored anywhere;
- ``5:`` with no text: accepted, the keyframe's prompt is head + tail alone;
- frame >= number of frames, the same frame twice, text lines between two keyframes, a quoted text
  that is not valid JSON: refused (``PromptTravelError`` quoting the line and what is allowed).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .params import ClosedLoop, TravelInterpolation

# A conditioning: (tokens, d) for SD1.x, or SDXL's {"crossattn": (tokens, d), "vector": (adm,)}.
Cond = torch.Tensor | Mapping[str, torch.Tensor]
# curve(frame, steps since the previous keyframe, steps between the two keyframes) -> travel weight t
TravelCurve = Callable[[int, int, int], float]

_KEYFRAME = re.compile(r'^"?(\d+)"?\s*:(.*)$')
_EXTRA_NETWORK = re.compile(r"<\w+:[^>]+>")  # LoRA/hypernetwork tags; the WebUI activates the first prompt's
_SEPARATORS = " \t,"
SLERP_LINEAR_ABOVE = 0.9995  # |cos| above this: the tensors are (anti)parallel, slerp is ill-conditioned


class PromptTravelError(ValueError):
    """A prompt-travel line the parser refuses; the message quotes it and says what is allowed."""


@dataclass(frozen=True)
class Keyframe:
    frame: int
    text: str
    line: str  # the source line, for error messages


@dataclass(frozen=True)
class TravelSchedule:
    """One video's prompts: ``prompts[i]`` is frame i's prompt, ``keyframes`` the frames whose
    conditioning is exact (sorted, unique); frames between keyframes get interpolated conditioning."""

    prompts: tuple[str, ...]
    keyframes: tuple[int, ...]

    def __post_init__(self):
        if not self.prompts or not self.keyframes:
            raise ValueError("a travel schedule needs at least one frame and one keyframe")
        if list(self.keyframes) != sorted(set(self.keyframes)) or self.keyframes[-1] >= len(self.prompts):
            raise ValueError(
                f"keyframes {self.keyframes} must be ascending, unique and < {len(self.prompts)}"
            )

    @property
    def frames(self) -> int:
        return len(self.prompts)

    @property
    def key_prompts(self) -> tuple[str, ...]:
        return tuple(self.prompts[k] for k in self.keyframes)

    @property
    def distinct(self) -> tuple[str, ...]:
        """Distinct prompts in order of first use: what the text encoder actually encodes."""
        return tuple(dict.fromkeys(self.prompts))

    def describe(self) -> str:
        """One log line per keyframe, so users see what the parser understood."""
        return "; ".join(f"frame {k}: {self.prompts[k]!r}" for k in self.keyframes)


# ---------------------------------------------------------------------------------------------
# Parsing


def has_keyframes(prompt: str) -> bool:
    return any(_KEYFRAME.match(line.strip()) for line in prompt.splitlines())


def parse_travel(prompt: str, frames: int) -> TravelSchedule | None:
    """Parse a multi-line prompt; None when it has no keyframe line (an ordinary prompt)."""
    if frames < 1:
        raise ValueError(f"number of frames must be >= 1, got {frames}")
    head: list[str] = []
    tail: list[str] = []
    keys: dict[int, Keyframe] = {}
    for raw in prompt.splitlines():
        line = raw.strip()
        if line in ("", "{", "}"):
            continue
        match = _KEYFRAME.match(line)
        if match is None:
            (tail if keys else head).append(line)
            continue
        if tail:
            raise PromptTravelError(
                f"prompt travel: the text line {tail[0]!r} sits between keyframes (before {line!r}). "
                "Put text shared by all frames before the first keyframe or after the last one; "
                "keyframe lines look like '8: open mouth'."
            )
        key = Keyframe(int(match.group(1)), _keyframe_text(match.group(2), line), line)
        if key.frame >= frames:
            raise PromptTravelError(
                f"prompt travel: keyframe {line!r} is at frame {key.frame}, but the video has {frames} "
                f"frames (0..{frames - 1}). Use a frame below {frames} or raise the number of frames."
            )
        if key.frame in keys:
            raise PromptTravelError(
                f"prompt travel: frame {key.frame} has two keyframes, {keys[key.frame].line!r} and "
                f"{line!r}. Keep one line per frame."
            )
        keys[key.frame] = key
    if not keys:
        return None
    ordered = [keys[f] for f in sorted(keys)]
    texts = _hoist_extra_networks([k.text for k in ordered])
    head_text, tail_text = _join(head), _join(tail)
    composed = [_join([head_text, text, tail_text]) + tags for text, tags in texts]
    frame_prompts, key_index = [], 0
    for f in range(frames):
        while key_index + 1 < len(ordered) and ordered[key_index + 1].frame <= f:
            key_index += 1
        frame_prompts.append(composed[key_index])
    return TravelSchedule(tuple(frame_prompts), tuple(k.frame for k in ordered))


def _keyframe_text(rest: str, line: str) -> str:
    text = rest.strip()
    if not text.startswith('"'):
        return text
    quoted = text.rstrip(_SEPARATORS)
    try:
        value = json.loads(quoted)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, str):
        raise PromptTravelError(
            f"prompt travel: cannot read the quoted text in {line!r}. JSON-style keyframes look like "
            '\'"8": "open mouth",\' (escape inner quotes as \\"); plain ones like \'8: open mouth\'.'
        )
    return value


def _join(parts: Sequence[str]) -> str:
    """Join prompt fragments with ", " the way users write them, dropping empty fragments."""
    cleaned = [part.strip().strip(_SEPARATORS) for part in parts]
    return ", ".join(part for part in cleaned if part)


def _hoist_extra_networks(texts: list[str]) -> list[tuple[str, str]]:
    """Return (text, tags) per keyframe.

    The WebUI strips ``<lora:…>`` tags from every prompt but activates only the first prompt's,
    and network weights cannot change per frame anyway. When keyframes carry different tags we
    move them all to the end of every frame's prompt (where stripping them leaves the text
    unchanged), so a LoRA named at frame 8 is active, for the whole video, as the user asked.
    """
    found = [_EXTRA_NETWORK.findall(text) for text in texts]
    if all(tags == found[0] for tags in found):
        return [(text, "") for text in texts]
    union = "".join(dict.fromkeys(tag for tags in found for tag in tags))
    return [(_EXTRA_NETWORK.sub("", text), union) for text in texts]


def schedule_from_entries(entries: Sequence[str], frames: int) -> TravelSchedule | None:
    """One video's prompts given as a per-frame list (Dynamic Prompts and other extensions).

    Identical entries are one prompt: parsed as usual (full keyframe semantics). Differing
    entries are taken as per-frame prompts, each parsed for keyframes and contributing its own
    frame's prompt; a keyframe starts wherever a frame's prompt differs from the previous frame's.
    None when there is nothing to travel (identical entries without keyframe lines).
    """
    if len(entries) != frames:
        raise ValueError(f"expected {frames} per-frame prompts, got {len(entries)}")
    if all(entry == entries[0] for entry in entries):
        return parse_travel(entries[0], frames)
    prompts = []
    for i, entry in enumerate(entries):
        parsed = parse_travel(entry, frames)
        prompts.append(parsed.prompts[i] if parsed else entry)
    keyframes = [0] + [i for i in range(1, frames) if prompts[i] != prompts[i - 1]]
    return TravelSchedule(tuple(prompts), tuple(keyframes))


def plan_videos(prompt: str | Sequence[str], frames: int, videos: int) -> tuple[TravelSchedule, ...] | None:
    """Per-video schedules for a job of ``videos`` videos (batch count) of ``frames`` frames.

    A string prompt gives the same schedule to every video. A list must hold one entry per frame
    of the job (frames * videos, the WebUI's own rule) or one per video. None: nothing travels.
    """
    if isinstance(prompt, str):
        schedule = parse_travel(prompt, frames)
        return None if schedule is None else (schedule,) * videos
    entries = list(prompt)
    if len(entries) == videos and videos != frames * videos:
        entries = [entry for entry in entries for _ in range(frames)]
    if len(entries) != frames * videos:
        raise PromptTravelError(
            f"prompt travel: got a list of {len(entries)} prompts for {videos} video(s) of {frames} "
            f"frames; a prompt list needs one entry per frame ({frames * videos}) or one per video ({videos})."
        )
    chunks = [entries[v * frames : (v + 1) * frames] for v in range(videos)]
    schedules = [schedule_from_entries(chunk, frames) for chunk in chunks]
    if all(s is None for s in schedules):
        return None
    # A video without keyframes keeps its one prompt: a schedule with a single keyframe at 0.
    return tuple(s or TravelSchedule(tuple(c), (0,)) for s, c in zip(schedules, chunks, strict=True))


# ---------------------------------------------------------------------------------------------
# Interpolation


def should_wrap(closed_loop: ClosedLoop, frames: int, context: int) -> bool:
    """Prompts travel back to the first keyframe only for R+P and A, and only with windows
    (frames > context): a single window does not loop."""
    return ClosedLoop(closed_loop) in (ClosedLoop.R_PLUS_P, ClosedLoop.A) and frames > context


def frame_fractions(
    frames: int,
    keyframes: Sequence[int],
    wrap: bool,
    curve: TravelCurve | None = None,
) -> list[tuple[int, int, float]]:
    """Per frame ``(i, j, t)``: its conditioning is interp(key i, key j, t), indices into keyframes.

    ``t`` is the distance to the previous keyframe over the distance between the two keyframes,
    measured forward in time; with ``wrap`` the last keyframe travels on to the first across the
    end of the video (and frames before the first keyframe come from the last one). A ``curve``
    replaces that linear ``t`` on frames that travel (see ``TravelCurve``).
    """
    keys = list(keyframes)
    result = []
    for f in range(frames):
        before = [i for i, k in enumerate(keys) if k <= f]
        after = [i for i, k in enumerate(keys) if k > f]
        if wrap:
            prev = before[-1] if before else len(keys) - 1
            nxt = after[0] if after else 0
        else:
            prev = before[-1] if before else 0
            nxt = after[0] if after else len(keys) - 1
        dp = (f - keys[prev]) % frames
        dn = (keys[nxt] - f) % frames
        if prev == nxt or dp + dn == 0:
            result.append((prev, prev, 0.0))
        elif curve is None:
            result.append((prev, nxt, dp / (dp + dn)))
        else:
            result.append((prev, nxt, float(curve(f, dp, dp + dn))))
    return result


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two whole tensors (flattened, angle from their global norms),
    applied to the unnormalised tensors; linear when they are (anti)parallel."""
    a32, b32 = a.float(), b.float()
    dot = torch.dot(a32.flatten(), b32.flatten()) / (a32.norm() * b32.norm()).clamp_min(1e-12)
    dot = float(dot.clamp(-1.0, 1.0))
    if abs(dot) > SLERP_LINEAR_ABOVE:
        return lerp(a, b, t)
    omega = math.acos(dot)
    s = math.sin(omega)
    out = (math.sin((1.0 - t) * omega) / s) * a32 + (math.sin(t * omega) / s) * b32
    return out.to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return ((1.0 - t) * a.float() + t * b.float()).to(a.dtype)


_INTERPOLATORS = {TravelInterpolation.SLERP: slerp, TravelInterpolation.LINEAR: lerp}


def interpolate_pair(a: Cond, b: Cond, t: float, mode: TravelInterpolation) -> Cond:
    """Interpolate one conditioning pair; SDXL dicts entry by entry (crossattn and vector)."""
    fn = _INTERPOLATORS[TravelInterpolation(mode)]
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    if isinstance(a, Mapping):
        return {key: fn(a[key], b[key], t) for key in a}
    return fn(a, b, t)


def pad_tokens(
    conds: Sequence[Cond], pad_rows: torch.Tensor | None = None, length: int | None = None
) -> list[Cond]:
    """Bring conditionings of different token lengths (1 vs 3 chunks of 77) to one length.

    Padding goes at the end (a leading ControlNet marker row stays first). ``pad_rows`` (k, d),
    e.g. the empty prompt's embedding, is tiled over the missing rows; without it the last token
    is repeated. SDXL dicts are padded in ``crossattn`` only. Token axis is -2 (works for (t, d)
    and (b, t, d)).
    """

    def tokens(c: Cond) -> torch.Tensor:
        return c["crossattn"] if isinstance(c, Mapping) else c

    target = max(tokens(c).shape[-2] for c in conds) if length is None else length
    out: list[Cond] = []
    for cond in conds:
        x = tokens(cond)
        missing = target - x.shape[-2]
        if missing < 0:
            raise ValueError(f"cannot pad {x.shape[-2]} tokens down to {target}")
        if missing:
            if pad_rows is None:
                fill = x[..., -1:, :].expand(*x.shape[:-2], missing, x.shape[-1])
            else:
                rows = pad_rows.reshape(-1, pad_rows.shape[-1]).to(x.device, x.dtype)
                fill = rows.repeat(math.ceil(missing / rows.shape[0]), 1)[:missing]
                fill = fill.expand(*x.shape[:-2], missing, x.shape[-1])
            x = torch.cat([x, fill], dim=-2)  # (…, t, d) -> (…, target, d)
        out.append({**cond, "crossattn": x} if isinstance(cond, Mapping) else x)
    return out


def interpolate_frames(
    key_conds: Sequence[Cond],
    keyframes: Sequence[int],
    frames: int,
    *,
    wrap: bool = False,
    mode: TravelInterpolation = TravelInterpolation.SLERP,
    pad_rows: torch.Tensor | None = None,
    fractions: Sequence[tuple[int, int, float]] | None = None,
) -> Cond:
    """Per-frame conditioning stacked on a new leading axis: (f, t, d), or a dict of stacks.

    ``key_conds[i]`` is the encoded prompt of ``keyframes[i]``; keyframe frames get their own
    conditioning exactly, frames in between are interpolated (see ``frame_fractions``).
    ``fractions``, one ``(i, j, t)`` per frame (e.g. from ``travel_curves.travel_fractions``),
    replaces the linear ``frame_fractions(frames, keyframes, wrap)``.
    """
    if len(key_conds) != len(keyframes):
        raise ValueError(f"{len(key_conds)} conditionings for {len(keyframes)} keyframes")
    if fractions is None:
        fractions = frame_fractions(frames, keyframes, wrap)
    elif len(fractions) != frames:
        raise ValueError(f"{len(fractions)} travel fractions for {frames} frames")
    conds = pad_tokens(key_conds, pad_rows)
    per_frame = [interpolate_pair(conds[i], conds[j], t, mode) for i, j, t in fractions]
    if isinstance(per_frame[0], Mapping):
        return {key: torch.stack([c[key] for c in per_frame]) for key in per_frame[0]}
    return torch.stack(per_frame)  # f × (t, d) -> (f, t, d)
