"""Audio for the motion engine: load a user's track, or synthesise a soft ambience.

Both return float32 arrays shaped ``channels x samples`` in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

DEFAULT_RATE = 48_000
#: Root notes (Hz) of the pad: F2, G2, A2, C3, D3.
_ROOTS = (87.31, 98.0, 110.0, 130.81, 146.83)
#: The pad's partials as ratios of the root (root, fifth, octave, ninth, octave + third)
#: and their levels.
_PARTIALS = ((1.0, 1.0), (1.5, 0.55), (2.0, 0.45), (2.25, 0.22), (2.5, 0.18))


def _layout(channels: int) -> str:
    if channels not in (1, 2):
        raise ValueError("channels must be 1 or 2")
    return "mono" if channels == 1 else "stereo"


def load_audio(
    path: str | Path, duration: float, sample_rate: int = DEFAULT_RATE, channels: int = 2
) -> np.ndarray:
    """Decode ``path`` (wav, mp3, ...) to float32 ``channels x n``, ``n = duration * rate``.

    Longer input is cut at ``duration``; shorter input is padded with silence.
    Raises ``ValueError`` when the file has no audio stream.
    """
    n = int(round(duration * sample_rate))
    out = np.zeros((channels, n), dtype=np.float32)
    resampler = av.AudioResampler(format="fltp", layout=_layout(channels), rate=sample_rate)
    pos = 0
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{Path(path).name}: no audio stream")
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            pos = _take(out, pos, resampler.resample(frame))
            if pos >= n:
                return out
    _take(out, pos, resampler.resample(None))
    return out


def _take(out: np.ndarray, pos: int, frames: list[av.AudioFrame]) -> int:
    """Copy resampled ``frames`` into ``out`` from ``pos``; return the new position."""
    for frame in frames:
        data = frame.to_ndarray()
        count = min(data.shape[1], out.shape[1] - pos)
        if count <= 0:
            break
        out[:, pos : pos + count] = data[:, :count]
        pos += count
    return pos


def synth_ambience(duration: float, seed: int, sample_rate: int = DEFAULT_RATE) -> np.ndarray:
    """A soft, deterministic stereo ambience: airy noise under a slowly breathing pad.

    The same ``seed`` gives the same samples. Fades in and out; peak 0.5.
    """
    n = max(0, int(round(duration * sample_rate)))
    if n == 0:
        return np.zeros((2, 0), dtype=np.float32)
    rng = np.random.default_rng(seed & 0xFFFF_FFFF)
    t = np.arange(n, dtype=np.float64) / sample_rate
    mix = np.float32(0.55) * _pad(t, rng) + np.float32(0.45) * _air(n, sample_rate, t, rng)
    mix *= _fades(n, sample_rate)
    peak = float(np.max(np.abs(mix)))
    if peak > 0:
        mix *= np.float32(0.5 / peak)
    return mix


def _sine(t: np.ndarray, freq: float, phase: float) -> np.ndarray:
    """``sin(2 pi f t + phase)`` as float32; the cycle count is wrapped in float64 first."""
    cycles = t * freq + phase / (2 * np.pi)
    cycles -= np.floor(cycles)
    return np.sin(cycles.astype(np.float32) * np.float32(2 * np.pi))


def _lfo(t: np.ndarray, freq: float, phase: float, depth: float) -> np.ndarray:
    """A slow swell between ``1 - 2 depth`` and 1 (float32 is exact enough below 1 Hz)."""
    wave = np.sin(t.astype(np.float32) * np.float32(2 * np.pi * freq) + np.float32(phase))
    return np.float32(1.0 - depth) + np.float32(depth) * wave


def _pad(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few sine partials, slightly detuned between channels, each with a slow swell."""
    root = float(rng.choice(_ROOTS))
    out = np.zeros((2, t.size), dtype=np.float32)
    total = sum(level for _, level in _PARTIALS)
    for ratio, level in _PARTIALS:
        swell = _lfo(t, rng.uniform(0.04, 0.15), rng.uniform(0, 2 * np.pi), 0.4)
        swell *= np.float32(level / total)
        for ch, detune in enumerate((-0.7, 0.7)):
            freq = root * ratio + detune * rng.uniform(0.5, 1.0)
            out[ch] += swell * _sine(t, freq, rng.uniform(0, 2 * np.pi))
    return out


def _air(n: int, sample_rate: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brownish band-limited noise with slow gusts.

    Made in the frequency domain: the spectrum of white noise is complex Gaussian, so the
    random bins are drawn directly (only below 8 kHz, where the shape is not ~0), shaped
    ~1/f between 60 Hz and 1.8 kHz, and inverse transformed.
    """
    bins = n // 2 + 1
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    used = int(np.searchsorted(freqs, 8000.0))
    f = np.maximum(freqs[:used], 1.0)
    shape = ((1.0 / f) * (f / (f + 60.0)) / np.sqrt(1.0 + (f / 1800.0) ** 4)).astype(np.float32)
    spectrum = np.zeros((2, bins), dtype=np.complex64)
    spectrum.real[:, :used] = rng.standard_normal((2, used), dtype=np.float32) * shape
    spectrum.imag[:, :used] = rng.standard_normal((2, used), dtype=np.float32) * shape
    spectrum[:, 0] = 0
    noise = np.fft.irfft(spectrum, n=n, axis=1).astype(np.float32, copy=False)
    noise /= float(np.max(np.abs(noise))) or 1.0
    return noise * _lfo(t, rng.uniform(0.05, 0.12), rng.uniform(0, 2 * np.pi), 0.35)


def _fades(n: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine fade in and out, up to 1.5 s each and at most a quarter of the length."""
    length = min(int(1.5 * sample_rate), n // 4)
    env = np.ones(n, dtype=np.float32)
    if length > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, length, dtype=np.float32))
        env[:length] = ramp
        env[n - length :] = ramp[::-1]
    return env
