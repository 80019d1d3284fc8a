"""FreeNoise noise rescheduling: block-wise permutations, determinism, partial blocks, no-ops."""

from __future__ import annotations

import pytest
import torch

from motion_module.freenoise import NoiseType, repeat_context, reschedule_noise, shuffle_context


def noise(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 4, 3, 5, generator=torch.Generator().manual_seed(seed))


def frame_ids(out: torch.Tensor, source: torch.Tensor) -> list[int]:
    """Which source frame each output frame is (exact equality; frames of random noise are unique)."""
    ids = []
    for frame in out:
        matches = [i for i, s in enumerate(source) if torch.equal(frame, s)]
        assert len(matches) == 1, "an output frame is not exactly one input frame"
        ids.append(matches[0])
    return ids


@pytest.mark.parametrize("frames,context", [(32, 16), (40, 16), (17, 16), (24, 8), (9, 4), (7, 1)])
def test_every_block_permutes_the_block_one_context_earlier(frames, context) -> None:
    x = noise(frames)
    before = x.clone()
    out = shuffle_context(x, context, 123)
    assert torch.equal(x, before)  # input untouched
    assert out.data_ptr() != x.data_ptr()
    ids = frame_ids(out, x)
    assert ids[:context] == list(range(min(context, frames)))  # the first block is the original
    for start in range(context, frames, context):
        block = ids[start : start + context]
        earlier = ids[start - context : start]
        if len(block) == context:
            assert sorted(block) == sorted(earlier)  # the same multiset of frames, reordered
        else:  # a last partial block: distinct frames taken from the block one context earlier
            assert len(set(block)) == len(block) and set(block) <= set(earlier)
    assert set(ids) <= set(range(context))  # nothing past the first context survives


def test_partial_block_takes_the_first_entries_of_its_permutation() -> None:
    frames, context = 21, 8  # blocks [8, 16) full, [16, 21) partial (5 frames)
    x = noise(frames)
    out = shuffle_context(x, context, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    first, second = torch.randperm(context, generator=gen), torch.randperm(context, generator=gen)
    assert torch.equal(out[8:16], x[:8][first])
    assert torch.equal(out[16:21], out[8:16][second[:5]])


def test_blocks_are_actually_shuffled_and_depend_on_the_seed() -> None:
    x = noise(64)
    a, b = shuffle_context(x, 16, 1), shuffle_context(x, 16, 2)
    assert frame_ids(a, x)[16:32] != list(range(16))
    assert not torch.equal(a, b)


def test_same_seed_same_noise() -> None:
    x = noise(48)
    assert torch.equal(shuffle_context(x, 16, 7), shuffle_context(x, 16, 7))
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(shuffle_context(x, 16, gen), shuffle_context(x, 16, 7))  # int = fresh Generator
    # a Generator advances: reusing it continues the random stream, so the second call differs
    assert not torch.equal(shuffle_context(x, 16, gen), shuffle_context(x, 16, 7))


@pytest.mark.parametrize("frames", [1, 8, 16])
def test_up_to_context_frames_are_unchanged(frames) -> None:
    x = noise(frames)
    for kind in NoiseType:
        out = reschedule_noise(x, kind, 16, 3)
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_default_leaves_long_noise_untouched_and_repeat_copies_the_first_block() -> None:
    x = noise(40)
    assert torch.equal(reschedule_noise(x, "default", 16, 3), x)
    repeated = reschedule_noise(x, NoiseType.REPEATED_CONTEXT, 16, 3)
    assert frame_ids(repeated, x) == list(range(16)) * 2 + list(range(8))
    assert torch.equal(repeated, repeat_context(x, 16))
    assert torch.equal(reschedule_noise(x, "freenoise", 16, 3), shuffle_context(x, 16, 3))


def test_errors_name_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"^noise_type is 'shuffled'; allowed: default, freenoise, repeated_context"
    ):
        reschedule_noise(noise(4), "shuffled", 16, 0)
    with pytest.raises(ValueError, match=r"context \(Context batch size\) is 0"):
        shuffle_context(noise(4), 0, 0)
    with pytest.raises(ValueError, match="expected one video"):
        shuffle_context(torch.zeros(2, 4, 8), 16, 0)
