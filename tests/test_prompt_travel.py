"""Prompt travel engine: the parser table (the predecessor's examples in docs/behaviour.md, JSON
style, list prompts, refused lines), per-frame fractions of the worked examples A/B/C, slerp
against an independent float64 formula, SDXL dicts, closed-loop wrap rules, and token-length
padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from motion_module.params import ClosedLoop, TravelInterpolation
from motion_module.prompt_travel import (
    PromptTravelError,
    TravelSchedule,
    frame_fractions,
    interpolate_frames,
    lerp,
    pad_tokens,
    parse_travel,
    plan_videos,
    schedule_from_entries,
    should_wrap,
    slerp,
)

EXAMPLE_A = "1girl, solo\n0: closed mouth\n8: open mouth\nsmile"
CLOSED = "1girl, solo, closed mouth, smile"
OPEN = "1girl, solo, open mouth, smile"


# ---------------------------------------------------------------------------------------------
# Parser table


@pytest.mark.parametrize(
    "prompt, frames, expected, keyframes",
    [
        # worked example A (docs/behaviour.md): head, two keyframes, tail
        (EXAMPLE_A, 16, [CLOSED] * 8 + [OPEN] * 8, (0, 8)),
        # no head: no leading ", "; no tail: no trailing ", "
        ("0: closed mouth\n8: open mouth", 12, ["closed mouth"] * 8 + ["open mouth"] * 4, (0, 8)),
        # frames before the first keyframe take the first (example C's keys 4 and 12)
        ("a\n4: b\n12: c", 16, ["a, b"] * 12 + ["a, c"] * 4, (4, 12)),
        # out of order: sorted
        ("8: open mouth\n0: closed mouth", 10, ["closed mouth"] * 8 + ["open mouth"] * 2, (0, 8)),
        # "5:text" without a space, and spaces around the colon
        ("head\n0:x\n5 :  y", 7, ["head, x"] * 5 + ["head, y"] * 2, (0, 5)),
        # blank lines between keyframes do not end the keyframe block
        ("h\n\n0: x\n\n3: y\n\nt", 5, ["h, x, t"] * 3 + ["h, y, t"] * 2, (0, 3)),
        # empty keyframe text: head and tail alone
        ("h\n0: x\n2:\nt", 4, ["h, x, t"] * 2 + ["h, t"] * 2, (0, 2)),
        # trailing commas on lines do not double up
        (
            "masterpiece,\n0: a,\n2: b,\nsmile,",
            3,
            ["masterpiece, a, smile"] * 2 + ["masterpiece, b, smile"],
            (0, 2),
        ),
        # JSON style as ComfyUI users paste it, braces and trailing commas included
        (
            '{\n"0": "closed mouth",\n"8": "open mouth, \\"x\\""\n}',
            9,
            ["closed mouth"] * 8 + ['open mouth, "x"'],
            (0, 8),
        ),
        # JSON style with head and tail lines
        (
            '1girl, solo\n"0": "closed mouth",\n"8": "open mouth",\nsmile',
            16,
            [CLOSED] * 8 + [OPEN] * 8,
            (0, 8),
        ),
        # emphasis, LoRA tags and embeddings in head/tail stay untouched
        (
            "(best:1.2), <lora:a:0.7>\n0: x\n1: y\nembedding_z",
            2,
            ["(best:1.2), <lora:a:0.7>, x, embedding_z", "(best:1.2), <lora:a:0.7>, y, embedding_z"],
            (0, 1),
        ),
        # one keyframe: every frame gets the composed prompt
        ("h\n0: x", 3, ["h, x"] * 3, (0,)),
    ],
)
def test_parse_table(prompt, frames, expected, keyframes):
    schedule = parse_travel(prompt, frames)
    assert schedule.prompts == tuple(expected)
    assert schedule.keyframes == keyframes


def test_ordinary_prompt_is_not_travel():
    assert parse_travel("1girl, solo\nsmile, 8k", 16) is None
    assert plan_videos("1girl", 16, 2) is None


def test_keyframe_lora_tags_are_hoisted_to_every_frame():
    # the WebUI activates only the first prompt's extra networks: a LoRA named at frame 2 must
    # reach every frame's prompt, and removing the tags must leave the prompt text as written
    schedule = parse_travel("h\n0: x\n2: y <lora:b:0.5>", 4)
    assert schedule.prompts[0] == "h, x<lora:b:0.5>"
    assert schedule.prompts[2] == "h, y<lora:b:0.5>"


@pytest.mark.parametrize(
    "prompt, frames, quoted, teaches",
    [
        ("a\n0: x\n16: y", 16, "16: y", "0..15"),
        ("0: x\n3: y\n3: z", 8, "3: z", "two keyframes"),
        ("0: x\nmiddle\n4: y", 8, "middle", "before the first keyframe or after the last"),
        ('"0": "unterminated,', 8, '"0": "unterminated,', "JSON-style"),
    ],
)
def test_refused_lines_are_quoted(prompt, frames, quoted, teaches):
    with pytest.raises(PromptTravelError) as error:
        parse_travel(prompt, frames)
    assert repr(quoted) in str(error.value)
    assert teaches in str(error.value)


def test_negative_prompt_uses_the_same_syntax():
    plans = plan_videos("lowres\n0: blurry\n4: watermark", 8, 1)
    assert plans[0].prompts == ("lowres, blurry",) * 4 + ("lowres, watermark",) * 4


def test_list_prompt_of_identical_entries_travels_like_a_string():
    # Dynamic Prompts with a fixed variant: every entry is the same multi-line travel prompt
    plans = plan_videos([EXAMPLE_A] * 32, 16, 2)
    assert plans == (parse_travel(EXAMPLE_A, 16),) * 2


def test_list_prompt_with_differing_entries_is_per_frame():
    # per-frame variants: each entry is parsed and gives its own frame; keyframes are changes
    entries = ["cat\n0: sit\n2: run"] * 2 + ["dog\n0: sit\n2: run"] * 2
    schedule = schedule_from_entries(entries, 4)
    assert schedule.prompts == ("cat, sit", "cat, sit", "dog, run", "dog, run")
    assert schedule.keyframes == (0, 2)
    # plain per-frame prompts from another extension: kept, never switched off
    assert schedule_from_entries(["a", "a", "b", "c"], 4).keyframes == (0, 2, 3)


def test_list_prompt_one_entry_per_video_and_bad_lengths():
    plans = plan_videos(["x\n0: a\n1: b", "y"], 2, 2)
    assert plans[0].prompts == ("x, a", "x, b")
    assert plans[1] == TravelSchedule(("y", "y"), (0,))
    with pytest.raises(PromptTravelError, match="one entry per frame"):
        plan_videos(["a", "b", "c"], 2, 2)


# ---------------------------------------------------------------------------------------------
# Per-frame fractions: worked examples A/B/C of docs/behaviour.md


def _fractions(frames, keys, wrap):
    return [(keys[i], keys[j], t) for i, j, t in frame_fractions(frames, keys, wrap)]


def test_example_a_no_wrap_when_frames_fit_the_context():
    assert not should_wrap(ClosedLoop.R_PLUS_P, 16, 16)
    got = _fractions(16, [0, 8], wrap=False)
    for f in range(8):
        assert got[f] == (0, 8, f / 8) if f else got[f][2] == 0.0
    assert all(got[f] == (8, 8, 0.0) for f in range(8, 16))


def test_example_b_wraps_back_to_the_first_keyframe():
    got = _fractions(24, [0, 8], wrap=True)
    assert got[4] == (0, 8, 0.5)
    assert got[16] == (8, 0, 0.5)
    assert got[23] == (8, 0, 15 / 16)
    # R-P: frames 8..23 all hold the keyframe at 8
    assert all(prev == 8 and t == 0.0 for prev, _, t in _fractions(24, [0, 8], wrap=False)[8:])


def test_example_c_keys_4_and_12():
    flat = _fractions(16, [4, 12], wrap=False)
    assert all(t == 0.0 and prev == 4 for prev, _, t in flat[:5])
    assert [t for _, _, t in flat[5:12]] == [k / 8 for k in range(1, 8)]
    assert all(t == 0.0 and prev == 12 for prev, _, t in flat[12:])
    closed = _fractions(24, [4, 12], wrap=True)
    assert closed[0] == (12, 4, 0.75)


@pytest.mark.parametrize(
    "loop, frames, context, expected",
    [
        (ClosedLoop.R_PLUS_P, 24, 16, True),
        (ClosedLoop.A, 24, 16, True),
        (ClosedLoop.R_MINUS_P, 24, 16, False),
        (ClosedLoop.N, 24, 16, False),
        (ClosedLoop.R_PLUS_P, 16, 16, False),
        (ClosedLoop.A, 8, 16, False),
        ("R+P", 17, 16, True),
    ],
)
def test_wrap_only_for_r_plus_p_and_a_beyond_the_context(loop, frames, context, expected):
    assert should_wrap(loop, frames, context) is expected


# ---------------------------------------------------------------------------------------------
# Interpolation on tensors


def _reference_slerp(a, b, t):
    """Independent float64 slerp: angle between the flattened tensors, applied unnormalised."""
    a64, b64 = a.double().numpy().ravel(), b.double().numpy().ravel()
    cos = float(np.dot(a64, b64) / (np.linalg.norm(a64) * np.linalg.norm(b64)))
    if abs(cos) > 0.9995:
        out = (1 - t) * a64 + t * b64
    else:
        w = math.acos(cos)
        out = (math.sin((1 - t) * w) * a64 + math.sin(t * w) * b64) / math.sin(w)
    return torch.from_numpy(out.reshape(a.shape)).float()


def test_example_a_on_random_tensors_exact_at_keyframes():
    gen = torch.Generator().manual_seed(0)
    c0, c8 = torch.randn(77, 32, generator=gen), torch.randn(77, 32, generator=gen)
    out = interpolate_frames([c0, c8], [0, 8], 16)
    assert out.shape == (16, 77, 32)
    assert torch.equal(out[0], c0) and torch.equal(out[8], c8) and torch.equal(out[15], c8)
    for f in range(1, 8):
        torch.testing.assert_close(out[f], _reference_slerp(c0, c8, f / 8), atol=1e-5, rtol=1e-5)
    # slerp keeps the norm of two equal-norm unrelated tensors, linear shrinks it
    mid_lin = interpolate_frames([c0, c8], [0, 8], 16, mode=TravelInterpolation.LINEAR)[4]
    torch.testing.assert_close(mid_lin, (c0 + c8) / 2)
    assert out[4].norm() > mid_lin.norm() * 1.2


def test_examples_b_and_c_on_random_tensors():
    gen = torch.Generator().manual_seed(1)
    c0, c8 = torch.randn(2, 77, 16, generator=gen)
    b = interpolate_frames([c0, c8], [0, 8], 24, wrap=True)
    torch.testing.assert_close(b[16], _reference_slerp(c8, c0, 0.5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b[23], _reference_slerp(c8, c0, 15 / 16), atol=1e-5, rtol=1e-5)
    c = interpolate_frames([c0, c8], [4, 12], 24, wrap=True)
    torch.testing.assert_close(c[0], _reference_slerp(c8, c0, 0.75), atol=1e-5, rtol=1e-5)
    assert torch.equal(c[4], c0) and torch.equal(c[12], c8)


def test_slerp_falls_back_to_linear_for_parallel_tensors():
    a = torch.randn(10, 4)
    torch.testing.assert_close(slerp(a, 3 * a, 0.25), lerp(a, 3 * a, 0.25))
    torch.testing.assert_close(slerp(a, 3 * a, 0.25), 1.5 * a)


def test_sdxl_dicts_are_interpolated_per_entry():
    gen = torch.Generator().manual_seed(2)
    keys = [
        {"crossattn": torch.randn(77, 8, generator=gen), "vector": torch.randn(12, generator=gen)}
        for _ in range(2)
    ]
    out = interpolate_frames(keys, [0, 4], 5)
    assert out["crossattn"].shape == (5, 77, 8) and out["vector"].shape == (5, 12)
    torch.testing.assert_close(
        out["vector"][2], _reference_slerp(keys[0]["vector"], keys[1]["vector"], 0.5), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        out["crossattn"][1],
        _reference_slerp(keys[0]["crossattn"], keys[1]["crossattn"], 0.25),
        atol=1e-5,
        rtol=1e-5,
    )


def test_half_precision_keeps_its_dtype():
    a, b = torch.randn(2, 77, 8).half()
    assert interpolate_frames([a, b], [0, 2], 3).dtype == torch.float16


# ---------------------------------------------------------------------------------------------
# Token lengths


def test_keyframes_of_one_and_three_chunks_give_one_length():
    gen = torch.Generator().manual_seed(3)
    short, long = torch.randn(77, 8, generator=gen), torch.randn(231, 8, generator=gen)
    empty = torch.randn(77, 8, generator=gen)
    out = interpolate_frames([short, long], [0, 4], 6, pad_rows=empty)
    assert out.shape == (6, 231, 8)
    assert (
        torch.equal(out[0, :77], short)
        and torch.equal(out[0, 77:154], empty)
        and torch.equal(out[0, 154:], empty)
    )
    assert torch.equal(out[4], long)


def test_pad_tokens_repeats_the_last_token_without_pad_rows_and_keeps_the_first_row():
    marked = torch.cat([torch.full((1, 4), 1024.0), torch.randn(77, 4)])
    other = torch.randn(155, 4)
    a, b = pad_tokens([marked, other])
    assert a.shape == b.shape == (155, 4)
    assert torch.equal(a[0], marked[0]) and torch.equal(a[78:], marked[-1:].expand(77, 4))
    assert torch.equal(b, other)
    batch = pad_tokens(
        [torch.randn(3, 77, 4), {"crossattn": torch.randn(3, 154, 4), "vector": torch.randn(3, 6)}]
    )
    assert batch[0].shape == (3, 154, 4) and batch[1]["vector"].shape == (3, 6)
