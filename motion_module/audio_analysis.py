"""What the music does per video frame: onsets (for keyframe timing) and loudness (travel speed).

Written with numpy alone (no librosa): a Hann-window STFT, a median-filter split of the
spectrogram into harmonic and percussive parts, spectral flux as the onset signal, and triangular
mel filters for loudness.

- Onsets. Sustained tones are horizontal lines in a spectrogram, hits are vertical ones. A median
  over time keeps the first and is the harmonic part; where a median over frequency (which keeps
  the second) outweighs it, the magnitude is the percussive part. Onsets are peaks of the
  spectral flux (summed rises of log magnitude from one STFT frame to the next) of the
  percussive part (``percussive``: drums, clicks), of the harmonic part (``harmonic``: new notes
  and chords), or of the whole spectrogram (``both``: any change). A peak must be the largest
  within ±30 ms, stand clear of the local average of the surrounding ±100 ms, and come at least
  ``min_gap`` after the previous one.
- Loudness. Video frame k is shown from k/fps to (k+1)/fps; its energy is the mel power of the
  audio played in that span (hop = sample rate / fps), reduced over mel bands by mean, max or
  median.

Imports nothing from the WebUI.
"""

from __future__ import annotations

import math

import numpy as np

from .audio_decode import Audio

ONSET_KINDS = ("percussive", "harmonic", "both")
ENERGY_REDUCTIONS = ("mean", "max", "median")
N_FFT = 1024  # 46 ms at 22.05 kHz: onsets land within about one hop of the true time
HOP = 512  # at 22.05 kHz: 23 ms steps, finer than any video frame
HPSS_KERNEL = 17  # median length in frames (time, 0.4 s) and bins (frequency)
PERCUSSIVE_MARGIN = 2.0  # a bin is percussive where the hit outweighs the tone this many times
LOG_GAIN = 1000.0  # log(1 + gain·|X|/loudest): 60 dB of dynamic range counted
MIN_FLUX = 10.0  # a strength scale below this is no event (a steady tone's flux: ~0.1)
START_FRAMES = N_FFT // HOP + 1  # frames whose window still reaches into the silence before the start
PEAK_HALF_WIDTH_S = 0.03
AVERAGE_HALF_WIDTH_S = 0.10
PEAK_DELTA = 0.07  # on flux scaled to a maximum of 1
MEDIAN_CHUNK = 256  # frames (or bins) per median block: bounds memory on long audio
N_MELS = 64


# ---------------------------------------------------------------------------------------------
# Spectrogram


def stft_magnitude(samples: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """|STFT| with a Hann window, frames centred at m·hop (zero padding at the ends): (frames, bins)."""
    x = np.asarray(samples, np.float32).reshape(-1)
    padded = np.pad(x, (n_fft // 2, n_fft // 2))
    count = 1 + len(x) // hop
    padded = np.pad(padded, (0, max(0, (count - 1) * hop + n_fft - len(padded))))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:count]  # (frames, n_fft)
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    return np.abs(np.fft.rfft(frames * window, axis=1)).astype(np.float32)  # (frames, n_fft/2 + 1)


def median_filter(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Running median of odd length ``size`` along ``axis`` of a 2-D array (edges padded by reflection)."""
    moved = np.moveaxis(x, axis, 0)  # (n, m) with the filtered axis first
    half = size // 2
    padded = np.pad(moved, ((half, half), (0, 0)), mode="reflect" if moved.shape[0] > half else "edge")
    out = np.empty_like(moved)
    for start in range(0, moved.shape[0], MEDIAN_CHUNK):
        stop = min(start + MEDIAN_CHUNK, moved.shape[0])
        windows = np.lib.stride_tricks.sliding_window_view(padded[start : stop + 2 * half], size, axis=0)
        out[start:stop] = np.median(windows, axis=-1)  # (chunk, m, size) -> (chunk, m)
    return np.moveaxis(out, 0, axis)


def split_harmonic_percussive(
    magnitude: np.ndarray, kernel: int = HPSS_KERNEL, margin: float = PERCUSSIVE_MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """(harmonic, percussive) parts of a (frames, bins) magnitude spectrogram.

    Harmonic: the median over time itself. It drops a hit completely (a hit lasts a frame or
    two, far less than half the kernel) yet keeps the step where a new note starts sharp, which
    masking the magnitude would not: a hit's energy in a tone's own bins would leak through.
    Percussive: the magnitude where the median over frequency exceeds ``margin`` times the
    median over time, zero elsewhere, so steady tones add nothing.
    """
    harmonic = median_filter(magnitude, kernel, axis=0)  # smooth over time: steady tones survive
    across = median_filter(magnitude, kernel, axis=1)  # smooth over frequency: hits survive
    percussive = np.where(across > margin * harmonic, magnitude, 0.0).astype(np.float32)
    return harmonic, percussive


def spectral_flux(magnitude: np.ndarray, loudest: float) -> np.ndarray:
    """Onset strength per STFT frame: summed positive rises of log magnitude since the frame before.

    Magnitudes are taken relative to ``loudest`` (the file's loudest bin), so a quiet recording
    has the same onsets as a loud one, and ``log(1 + LOG_GAIN·x)`` makes a rise 60 dB below the
    loudest bin count about as much as one at full level. The first frame is compared with
    silence, so audio that starts with a hit has an onset at 0.
    """
    if loudest <= 0:
        return np.zeros(len(magnitude))
    log_mag = np.log1p((LOG_GAIN / loudest) * magnitude.astype(np.float64))
    log_mag = np.concatenate([np.zeros_like(log_mag[:1]), log_mag])  # silence before the start
    return np.maximum(0.0, np.diff(log_mag, axis=0)).sum(axis=1)  # (frames, bins) -> (frames,)


# ---------------------------------------------------------------------------------------------
# Onsets


def check_onset_kind(kind: str) -> str:
    if kind not in ONSET_KINDS:
        raise ValueError(f"audio_onsets {kind!r} is not an onset kind; allowed: {', '.join(ONSET_KINDS)}")
    return kind


def onset_strength(audio: Audio, kind: str = "percussive") -> np.ndarray:
    """Spectral flux of the part ``kind`` names, one value per STFT frame (at HOP / rate seconds)."""
    magnitude = stft_magnitude(audio.samples)
    loudest = float(magnitude.max(initial=0.0))
    if check_onset_kind(kind) == "harmonic":
        magnitude = median_filter(magnitude, HPSS_KERNEL, axis=0)  # the harmonic part alone
    elif kind == "percussive":
        magnitude = split_harmonic_percussive(magnitude)[1]
    return spectral_flux(magnitude, loudest)


def pick_peaks(
    strength: np.ndarray, frame_rate: float, min_gap: float, delta: float = PEAK_DELTA
) -> list[int]:
    """Indices of onset peaks in ``strength`` sampled at ``frame_rate`` per second (see module doc).

    The strength is scaled by its maximum after the first ``START_FRAMES`` (where the sound
    rising from the silence before the start would dwarf everything else) but at least by
    ``MIN_FLUX``, so near-silence or a steady tone yields no onsets instead of amplified noise.
    """
    scale = max(MIN_FLUX, float(strength[START_FRAMES:].max(initial=0.0)))
    s = np.minimum(strength / scale, 1.0)
    peak_w = max(1, round(PEAK_HALF_WIDTH_S * frame_rate))
    avg_w = max(1, round(AVERAGE_HALF_WIDTH_S * frame_rate))
    gap = max(1, round(min_gap * frame_rate))
    peaks: list[int] = []
    for m in range(len(s)):
        if s[m] < s[max(0, m - peak_w) : m + peak_w + 1].max():
            continue
        if s[m] < s[max(0, m - avg_w) : m + avg_w + 1].mean() + delta:
            continue
        if peaks and m - peaks[-1] < gap:
            continue
        peaks.append(m)
    return peaks


def onset_times(audio: Audio, kind: str = "percussive", min_gap: float = 0.1) -> list[float]:
    """Onset times in seconds from the start of the audio, ascending."""
    frame_rate = audio.rate / HOP
    return [m / frame_rate for m in pick_peaks(onset_strength(audio, kind), frame_rate, min_gap)]


def onset_frames(
    audio: Audio, fps: float, kind: str = "percussive", frames: int | None = None, min_gap: float = 0.1
) -> list[int]:
    """Video frame numbers (0-based, at ``fps``) where onsets fall: the frame whose start time is
    nearest each onset, without repeats; with ``frames``, only those below it. These are the
    frames to put prompt keyframes on."""
    _check_fps(fps)
    found = (round(t * fps) for t in onset_times(audio, kind, min_gap))
    return sorted({f for f in found if frames is None or f < frames})


# ---------------------------------------------------------------------------------------------
# Loudness per video frame


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filters(rate: int, n_fft: int, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters evenly spaced on the mel scale from 0 Hz to rate/2, each of unit area
    (so wide high bands do not outweigh narrow low ones): (n_mels, n_fft/2 + 1)."""
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(rate / 2), n_mels + 2))[:, None]  # (n_mels + 2, 1)
    bins_hz = np.fft.rfftfreq(n_fft, 1.0 / rate)[None]  # (1, bins)
    rising = (bins_hz - edges[:-2]) / (edges[1:-1] - edges[:-2])
    falling = (edges[2:] - bins_hz) / (edges[2:] - edges[1:-1])
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))


def mel_energy(audio: Audio, fps: float, frames: int | None = None, reduce: str = "mean") -> np.ndarray:
    """Loudness per video frame, scaled so the loudest frame is 1 (all zeros for silence): (frames,).

    Video frame k is shown from k/fps to (k+1)/fps; its energy is the mel power spectrum of the
    samples played in that time (hop = rate / fps samples, no overlap: a beat counts for the
    frame it is heard on), reduced over the mel bands by ``reduce`` (``mean``, ``max``,
    ``median``). Frames past the end of the audio are 0. ``frames`` defaults to the audio's
    length in frames.
    """
    _check_fps(fps)
    if reduce not in ENERGY_REDUCTIONS:
        raise ValueError(
            f"travel_curve_args {reduce!r} is not a reduction for the audio curve; "
            f"allowed: {', '.join(ENERGY_REDUCTIONS)}"
        )
    hop = audio.rate / fps
    count = math.ceil(audio.seconds * fps - 1e-9) if frames is None else frames
    n_fft = 1 << max(1, math.ceil(hop) - 1).bit_length()
    filters = mel_filters(audio.rate, n_fft)
    samples = np.asarray(audio.samples, np.float64)
    energy = np.zeros(count)
    for k in range(count):
        span = samples[round(k * hop) : round((k + 1) * hop)]
        if len(span):
            power = np.abs(np.fft.rfft(span, n_fft)) ** 2  # (bins,)
            energy[k] = getattr(np, reduce)(filters @ power)  # (n_mels,) -> one number
    top = energy.max(initial=0.0)
    return energy / top if top > 0 else energy


def _check_fps(fps: float) -> None:
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a number > 0, got {fps!r}")
