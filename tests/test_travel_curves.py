"""Travel curves: linear is today's travel bit for bit; sine f=1 goes there and back; a curve
string's points come back as weights; audio energy sets the speed; the weights drive the existing
slerp through ``interpolate_frames(fractions=...)``; bad arguments are refused by field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from motion_module.prompt_travel import frame_fractions, interpolate_frames, slerp
from motion_module.travel_curves import (
    audio_reduction,
    sine_frequencies,
    sine_weight,
    travel_fractions,
)


def weights(fractions):
    return [t for _, _, t in fractions]


@pytest.mark.parametrize(
    "frames, keys, wrap", [(16, [0, 8], False), (24, [4, 12], True), (10, [0, 3, 9], False)]
)
def test_linear_is_frame_fractions_exactly(frames, keys, wrap):
    assert travel_fractions("linear", None, frames, keys, wrap) == frame_fractions(frames, keys, wrap)
    torch.manual_seed(0)
    conds = [torch.randn(77, 8) for _ in keys]
    default = interpolate_frames(conds, keys, frames, wrap=wrap)
    hooked = interpolate_frames(
        conds, keys, frames, wrap=wrap, fractions=travel_fractions("linear", "", frames, keys, wrap)
    )
    assert torch.equal(default, hooked)


def test_sine_f1_goes_there_and_back():
    frac = travel_fractions("sine", "1", 17, [0, 16])
    t = weights(frac)
    assert [i for i, _, _ in frac[:16]] == [0] * 16 and [j for _, j, _ in frac[:16]] == [1] * 16
    assert t[0] == 0.0 and t[8] == pytest.approx(1.0, abs=1e-12)  # the peak, mid-segment
    assert sine_weight(1.0, [1]) == pytest.approx(0.0, abs=1e-12)  # back at 0 at the segment's end
    assert t[15] == pytest.approx(math.sin(math.pi / 16) ** 2)  # last in-between frame nearly home
    assert np.allclose(t[1:8], t[15:8:-1])  # symmetric
    assert frac[16] == (1, 1, 0.0)  # the next keyframe is exact


def test_sine_half_frequency_eases_monotonically():
    t = weights(travel_fractions("sine", 0.5, 9, [0, 8]))[:8]
    assert np.all(np.diff(t) > 0)
    assert t[4] == pytest.approx(0.5)  # sin²(π/4)


def test_several_frequencies_are_normalised_to_peak_one():
    grid = np.linspace(0, 1, 1001)
    values = np.array([sine_weight(s, (1, 3)) for s in grid])
    assert values.min() == pytest.approx(0.0, abs=1e-12) and values.max() == pytest.approx(1.0, abs=1e-6)
    assert sine_frequencies("1, 3") == sine_frequencies([1, 3]) == (1.0, 3.0)
    assert sine_frequencies("") == sine_frequencies(None) == (1.0,)


CURVE = "0:(0.0), 50:(1.0), 60:(0.5)"


def test_curve_string_reproduces_its_points():
    t = weights(travel_fractions("curve", CURVE, 70, [0, 69]))
    assert (t[0], t[50], t[60]) == (0.0, 1.0, 0.5)
    assert t[25] == pytest.approx(0.5) and t[55] == pytest.approx(0.75)
    assert t[61:69] == [0.5] * 8  # past the last point: its value
    assert t[69] == 0.0  # the last keyframe has nowhere to travel: exact


def test_curve_x_axis_is_the_whole_videos_frame_index():
    frac = travel_fractions("curve", "0:(0), 20:(1)", 21, [0, 10, 20])
    assert frac[5] == (0, 1, 0.25) and frac[15] == (1, 2, 0.75)
    assert frac[10] == (1, 2, 0.5)  # a keyframe is exact only where the curve is 0


def test_curve_weights_feed_slerp_and_are_monotone_where_the_curve_is():
    torch.manual_seed(1)
    a, b = torch.randn(77, 16), torch.randn(77, 16)
    frac = travel_fractions("curve", CURVE, 70, [0, 69])
    out = interpolate_frames([a, b], [0, 69], 70, fractions=frac)
    assert out.shape == (70, 77, 16)
    for f in (10, 50, 55, 60, 65):
        assert torch.allclose(out[f], slerp(a, b, frac[f][2]), atol=1e-6)
    assert torch.equal(out[0], a)
    # distance to b falls while the curve rises (0..50), grows while it falls (50..60)
    dist = torch.stack([(out[f] - b).norm() for f in range(70)]).numpy()
    assert np.all(np.diff(dist[:51]) < 0) and np.all(np.diff(dist[50:61]) > 0)
    assert torch.equal(out[50], b)


def test_bad_curve_strings_are_refused_with_the_position():
    with pytest.raises(
        ValueError,
        match=r"travel_curve_args '0:\(0\), 10:\(1.5\)': the value 1.5 is outside 0-1 at character 11",
    ):
        travel_fractions("curve", "0:(0), 10:(1.5)", 20, [0, 19])
    with pytest.raises(ValueError, match="travel_curve_args .* at character 7"):
        travel_fractions("curve", "0:(0), ten:(1)", 20, [0, 19])
    with pytest.raises(ValueError, match="travel_curve_args is empty"):
        travel_fractions("curve", "", 20, [0, 19])


@pytest.mark.parametrize("args", ["0", "-1", "fast", "1, x", [1, "a"], True])
def test_bad_sine_frequencies(args):
    with pytest.raises(ValueError, match="travel_curve_args .* allowed: numbers > 0"):
        travel_fractions("sine", args, 8, [0, 7])


def test_unknown_kind_names_travel_curve():
    with pytest.raises(ValueError, match="travel_curve 'cubic' .* allowed: linear, sine, curve, audio"):
        travel_fractions("cubic", None, 8, [0, 7])


def test_audio_constant_energy_is_linear():
    linear = weights(frame_fractions(16, [0, 8], False))
    assert weights(travel_fractions("audio", None, 16, [0, 8], energy=np.full(16, 3.0))) == pytest.approx(
        linear, abs=1e-12
    )


def test_audio_energy_sets_the_speed():
    energy = [0, 0, 4, 0, 0, 0, 0, 0, 0]  # all the loudness in frame 2
    t = weights(travel_fractions("audio", "max", 9, [0, 8], energy=energy))
    assert t[:3] == [0, 0, 0] and t[3:8] == [1.0] * 5  # the whole travel happens over frame 2
    energy = [1, 1, 1, 1, 3, 3, 3, 3, 0]
    t = weights(travel_fractions("audio", "", 9, [0, 8], energy=energy))
    assert t[:8] == pytest.approx([0, 1 / 16, 2 / 16, 3 / 16, 4 / 16, 7 / 16, 10 / 16, 13 / 16])
    assert np.all(np.diff(t[:8]) >= 0)


def test_audio_wraps_across_the_end_and_silence_falls_back_to_linear():
    t = weights(travel_fractions("audio", None, 8, [0, 4], True, [1, 0, 0, 1, 2, 2, 0, 0]))
    assert t == [0.0, 0.5, 0.5, 0.5, 0.0, 0.5, 1.0, 1.0]
    t = weights(travel_fractions("audio", None, 8, [0, 4], False, np.zeros(8)))
    assert t[:4] == [0, 0.25, 0.5, 0.75]


def test_audio_needs_energy_of_the_right_length_and_a_known_reduction():
    with pytest.raises(ValueError, match="travel_curve 'audio' needs audio"):
        travel_fractions("audio", None, 8, [0, 4])
    with pytest.raises(ValueError, match="8 finite values >= 0"):
        travel_fractions("audio", None, 8, [0, 4], energy=np.ones(7))
    with pytest.raises(ValueError, match="8 finite values >= 0"):
        travel_fractions("audio", None, 8, [0, 4], energy=-np.ones(8))
    with pytest.raises(ValueError, match="travel_curve_args 'loud' .* allowed: mean, max, median"):
        travel_fractions("audio", "loud", 8, [0, 4], energy=np.ones(8))
    assert audio_reduction(" Median ") == "median" and audio_reduction(None) == "mean"


def test_wrong_number_of_fractions_is_refused():
    with pytest.raises(ValueError, match="7 travel fractions for 8 frames"):
        interpolate_frames(
            [torch.ones(2, 2), torch.zeros(2, 2)], [0, 4], 8, fractions=frame_fractions(7, [0, 4], False)
        )
