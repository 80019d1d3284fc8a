"""Audio: a 120 bpm click track (written with ``wave``, re-encoded to MP3/Ogg/FLAC/M4A by the
bundled ffmpeg) decodes from paths, base64 and data URLs; onsets come every 0.5 s (±1 frame at
8 fps); harmonic onsets follow note changes, not clicks; loudness per frame follows the audio;
unreadable audio is refused naming ``audio``."""

from __future__ import annotations

import base64
import subprocess
import wave

import numpy as np
import pytest

from motion_module.audio_analysis import (
    mel_energy,
    onset_frames,
    onset_times,
    split_harmonic_percussive,
    stft_magnitude,
)
from motion_module.audio_decode import Audio, ffmpeg_binary, load_audio, sniff_audio

RATE = 44100
BPM = 120
SECONDS = 4.0
FPS = 8
BEATS = [round(k * 60 / BPM * FPS) for k in range(int(SECONDS * BPM / 60))]  # 0, 4, 8, ... 28


def click_track(seconds=SECONDS, rate=RATE, bpm=BPM) -> np.ndarray:
    """Short noise bursts (5 ms, decaying) on every beat, over a faint steady hum."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.02 * np.sin(2 * np.pi * 110 * t)
    burst = rng.uniform(-1, 1, int(0.005 * rate)) * np.exp(-np.arange(int(0.005 * rate)) / (0.001 * rate))
    for k in range(int(seconds * bpm / 60)):
        start = int(k * 60 / bpm * rate)
        x[start : start + len(burst)] += 0.8 * burst
    return x


def write_wav(path, samples, rate=RATE, channels=2):
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(np.repeat(pcm[:, None], channels, 1).tobytes())
    return path


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    """The click track as WAV, MP3, Ogg Vorbis, FLAC and M4A (AAC)."""
    folder = tmp_path_factory.mktemp("clicks")
    files = {"wav": write_wav(folder / "click.wav", click_track())}
    for ext in ("mp3", "ogg", "flac", "m4a"):
        files[ext] = folder / f"click.{ext}"
        subprocess.run(
            [ffmpeg_binary(), "-v", "error", "-y", "-i", str(files["wav"]), str(files[ext])], check=True
        )
    return files


def assert_on_beats(found, beats=BEATS):
    assert len(found) == len(beats), (found, beats)
    assert max(abs(f - b) for f, b in zip(found, beats, strict=True)) <= 1, (found, beats)


@pytest.mark.parametrize("ext", ["wav", "mp3", "ogg", "flac", "m4a"])
def test_click_track_onsets_every_half_second(clicks, ext):
    audio = load_audio(clicks[ext])
    assert audio.rate == 22050 and audio.samples.dtype == np.float32
    assert audio.seconds == pytest.approx(SECONDS, abs=0.06)  # MP3/AAC add a little padding
    assert_on_beats(onset_frames(audio, FPS, "percussive"))
    assert_on_beats(onset_frames(audio, FPS, "both"))
    times = onset_times(audio, "percussive")
    assert np.allclose(np.diff(times), 0.5, atol=0.03)


def test_onset_frames_follow_the_fps_and_the_frame_limit(clicks):
    audio = load_audio(clicks["flac"])
    assert_on_beats(onset_frames(audio, 12, "percussive"), [k * 6 for k in range(8)])
    assert onset_frames(audio, FPS, "percussive", frames=13) == [0, 4, 8, 12]


def notes_and_clicks(rate=22050):
    """A note change every 0.5 s (soft 10 ms fades) and a click halfway between note changes."""
    rng = np.random.default_rng(1)
    x = np.zeros(int(4 * rate))
    pitches = [220, 277.2, 329.6, 440, 261.6, 349.2, 392, 246.9]
    for k, pitch in enumerate(pitches):
        t = np.arange(int(0.5 * rate)) / rate
        fade = np.minimum(1, np.minimum(t / 0.01, (0.5 - t) / 0.01))
        note = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in (1, 2, 3))
        x[int(k * 0.5 * rate) : int(k * 0.5 * rate) + len(t)] += 0.3 * note * fade
        start = int((0.25 + 0.5 * k) * rate)
        x[start : start + 100] += rng.uniform(-0.8, 0.8, 100)
    return Audio(x.astype(np.float32), rate)


def test_harmonic_onsets_follow_notes_and_percussive_ones_follow_clicks():
    audio = notes_and_clicks()
    assert_on_beats(onset_frames(audio, FPS, "harmonic"), [4 * k for k in range(8)])  # note changes
    assert_on_beats(onset_frames(audio, FPS, "percussive"), [2 + 4 * k for k in range(8)])  # clicks
    both = onset_frames(audio, FPS, "both")
    assert {2 + 4 * k for k in range(8)} <= set(both)
    quiet = Audio(audio.samples * 0.01, audio.rate)  # level does not matter
    assert onset_frames(quiet, FPS, "harmonic") == onset_frames(audio, FPS, "harmonic")


def test_split_puts_tones_in_harmonic_and_hits_in_percussive():
    magnitude = stft_magnitude(notes_and_clicks().samples)
    harmonic, percussive = split_harmonic_percussive(magnitude)
    click_frame = round(0.25 * 22050 / 512)
    tone_frame = round(0.40 * 22050 / 512)
    assert percussive[click_frame].sum() > 10 * percussive[tone_frame].sum()
    assert harmonic[tone_frame].sum() > 0.5 * magnitude[tone_frame].sum()


def test_steady_sound_and_silence_have_no_onsets_after_the_start():
    rate = 22050
    t = np.arange(3 * rate) / rate
    tone = Audio((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    assert onset_frames(tone, FPS, "harmonic") == [0]
    silence = Audio(np.zeros(rate, np.float32), rate)
    assert onset_frames(silence, FPS, "percussive") == onset_frames(silence, FPS, "both") == []


def test_mel_energy_per_frame(clicks):
    audio = load_audio(clicks["wav"])
    energy = mel_energy(audio, FPS)
    assert energy.shape == (32,) and energy.max() == 1.0
    beats = energy[BEATS]
    others = np.delete(energy, BEATS)
    # each click counts in its own frame only; between them the steady hum gives a flat level
    assert beats.min() > others.max() + 0.3 and np.ptp(others) < 0.01
    assert mel_energy(audio, FPS, frames=40)[32:].tolist() == [0.0] * 8  # past the end: silence
    for reduce in ("max", "median"):
        assert mel_energy(audio, FPS, reduce=reduce).argmax() in BEATS
    rate = 22050
    t = np.arange(4 * rate) / rate
    swell = Audio((np.sin(2 * np.pi * 440 * t) * t / 4).astype(np.float32), rate)
    energy = mel_energy(swell, 10)
    assert np.all(np.diff(energy) > 0) and energy[-1] == 1.0
    assert energy[20] / energy[39] == pytest.approx((20.5 / 39.5) ** 2, rel=0.05)  # power ∝ amplitude²


def test_base64_and_data_url_decode_like_the_file(clicks):
    reference = load_audio(clicks["ogg"])
    data = base64.b64encode(clicks["ogg"].read_bytes()).decode()
    assert np.array_equal(load_audio(data).samples, reference.samples)
    assert np.array_equal(load_audio(f"data:audio/ogg;base64,{data}").samples, reference.samples)
    assert np.array_equal(load_audio(clicks["ogg"].read_bytes()).samples, reference.samples)
    assert load_audio(clicks["ogg"], seconds=1.0).seconds == pytest.approx(1.0, abs=0.01)


def test_sniffing():
    assert sniff_audio(b"RIFF\0\0\0\0WAVEfmt ") == "wav"
    assert sniff_audio(b"ID3\x04") == sniff_audio(b"\xff\xfb\x90\x00") == "mp3"
    assert sniff_audio(b"\xff\xf1\x50\x80") == "aac"
    assert sniff_audio(b"\0\0\0\x1cftypM4A ") == "mov"
    assert sniff_audio(b"#EXTM3U\nhttp://x") is None  # a playlist is never handed to ffmpeg


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing.mp3"), "neither an existing file nor base64 audio data"),
        (lambda d: str(d / "notes.txt"), "is not audio"),
        (lambda d: str(d / "broken.wav"), "cannot be decoded"),
        (lambda d: "data:audio/wav;base64,@@@", "not valid base64"),
        (lambda d: "data:audio/wav,abc", "without base64 data"),
        (
            lambda d: base64.b64encode(b"plain text, not audio").decode(),
            "neither an existing file nor base64",
        ),
        (lambda d: "", "audio is empty"),
        (lambda d: 42, "must be a path or base64 text"),
    ],
)
def test_unreadable_audio_is_refused_naming_audio(tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\0\0\0\0WAVE" + b"garbage" * 20)
    with pytest.raises(ValueError, match="^audio") as caught:
        load_audio(make(tmp_path))
    assert message in str(caught.value)


def test_paths_outside_the_allowed_folders_are_refused(clicks, tmp_path):
    with pytest.raises(ValueError, match="audio .* outside the folders"):
        load_audio(clicks["wav"], allowed_roots=[tmp_path])
    assert load_audio(clicks["wav"], allowed_roots=[clicks["wav"].parent]).rate == 22050
