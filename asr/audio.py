"""Audio loading: any file soundfile reads, any rate, any channel count -> 16 kHz mono float32."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = [
    "SAMPLE_RATE", "AudioError", "StreamResampler", "load_audio", "audio_duration", "resample", "stream_audio",
]

SAMPLE_RATE = 16000


class AudioError(RuntimeError):
    """An audio file is missing, unreadable or corrupt. The message names the file."""


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling of ``wave`` (..., N) from ``orig_sr`` to ``new_sr``."""
    if orig_sr == new_sr:
        return wave
    return AF.resample(wave, orig_sr, new_sr)


# libsndfile's header log notes a data chunk shorter than its header claims: "data : 32000 (should be 15978)"
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_complete(f: sf.SoundFile, path: str | Path) -> None:
    """Raise :class:`AudioError` when ``f`` is cut short: libsndfile opens many truncated files."""
    m = _SHORT_DATA.search(f.extra_info)
    if m and int(m.group(2)) < int(m.group(1)):
        raise AudioError(f"{path}: truncated: the header declares {m.group(1)} bytes of audio, "
                         f"the file holds {m.group(2)}")
    if f.format == "OGG" and not _ogg_has_end_of_stream(path):
        raise AudioError(f"{path}: truncated: the Ogg stream has no end-of-stream page")
    if f.format == "NIST":
        with open(path, "rb") as raw:
            count = re.search(rb"sample_count -i (\d+)", raw.read(1024))
        if count and int(count.group(1)) > f.frames:
            raise AudioError(f"{path}: truncated: the header declares {int(count.group(1))} samples, "
                             f"the file holds {f.frames}")
    if f.frames > 0:
        f.seek(f.frames - 1)
        if f.read(1, dtype="float32").shape[0] != 1:
            raise AudioError(f"{path}: truncated: cannot read the last sample")
        f.seek(0)


def _ogg_has_end_of_stream(path: str | Path) -> bool:
    """True when the last Ogg page carries the end-of-stream flag (header type bit 0x04)."""
    with open(path, "rb") as raw:
        raw.seek(0, 2)
        size = raw.tell()
        raw.seek(max(0, size - 65536))
        tail = raw.read()
    last = tail.rfind(b"OggS")
    return last >= 0 and last + 5 < len(tail) and bool(tail[last + 5] & 0x04)


def audio_duration(path: str | Path) -> float:
    """Duration of ``path`` in seconds, read from its header (a truncated file is an error)."""
    try:
        with sf.SoundFile(str(path)) as f:
            _check_complete(f, path)
            return f.frames / f.samplerate
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(_describe(path, e)) from None


def load_audio(path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
    """Read ``path`` (optionally the segment ``start``..``end`` seconds) as 16 kHz mono float32.

    Returns:
        (num_samples,) float32 tensor in [-1, 1].

    Raises:
        AudioError: the file is missing, not audio soundfile can read, truncated, has NaN/inf
            samples, or the segment lies outside the file.
    """
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            _check_complete(f, path)
            sr = f.samplerate
            first = 0 if start is None else int(round(start * sr))
            last = f.frames if end is None else min(int(round(end * sr)), f.frames)
            if first < 0 or first >= max(last, 1) and f.frames > 0:
                raise AudioError(f"{path}: segment {start}..{end} s lies outside the file "
                                 f"({f.frames / sr:.2f} s)")
            f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(_describe(path, e)) from None
    if data.shape[0] < last - first:
        raise AudioError(f"{path}: truncated: read {data.shape[0]} of {last - first} samples")
    if not np.isfinite(data).all():  # NaN/inf must never reach the model
        raise AudioError(f"{path}: {int((~np.isfinite(data)).sum())} non-finite samples (NaN or inf)")
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return resample(mono, sr).contiguous()


def _describe(path: str | Path, error: Exception) -> str:
    if not Path(path).exists():
        return f"{path}: no such audio file"
    return f"{path}: cannot read audio ({error})"


def stream_audio(path: str | Path, chunk_seconds: float = 10.0):
    """Yield 16 kHz mono float32 chunks of ``path`` without reading the whole file (hours-long
    audio in bounded memory), resampled by a :class:`StreamResampler`: the concatenated chunks equal
    :func:`load_audio` (up to float rounding) at any rate, and a server resampling a live stream
    gets the same samples.
    """
    path = Path(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:
        raise AudioError(_describe(path, e)) from None
    with f:
        _check_complete(f, path)
        resampler = StreamResampler(f.samplerate)
        step = max(1, int(chunk_seconds * f.samplerate))
        while True:
            data = f.read(step, dtype="float32", always_2d=True)
            if not len(data):
                break
            out = resampler.accept(data.mean(axis=1))
            if out.size:
                yield torch.from_numpy(out)
        out = resampler.flush()
        if out.size:
            yield torch.from_numpy(out)


class StreamResampler:
    """Resample a stream to ``new_sr`` chunk by chunk, with any chunk sizes.

    Input is cut on the grid where input and output samples align (``orig_sr / gcd`` input samples)
    and each piece is resampled with ``_RESAMPLE_PAD`` input samples of context on both sides, so the
    concatenated outputs equal :func:`resample` of the whole stream up to float rounding. An output
    sample waits for that right context: about 32 ms of latency at 16 kHz input (none when
    ``orig_sr == new_sr``).
    """

    def __init__(self, orig_sr: int, new_sr: int = SAMPLE_RATE) -> None:
        if orig_sr <= 0 or new_sr <= 0:
            raise ValueError(f"sample rates must be > 0, got {orig_sr} and {new_sr}")
        g = int(np.gcd(orig_sr, new_sr))
        self.orig_sr, self.new_sr = orig_sr, new_sr
        self._unit, self._ratio = orig_sr // g, new_sr // g  # input / output samples per grid step
        self._pad = 0 if orig_sr == new_sr else -(-_RESAMPLE_PAD // self._unit) * self._unit
        self._buf = np.zeros(0, np.float32)  # input samples from index self._lo on
        self._lo = 0
        self._start = 0  # first input sample not yet resampled (on the grid)
        self._total = 0  # input samples accepted

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Take input samples (N,), return the output samples they complete (float32, maybe empty)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, samples]) if self._buf.size else samples.copy()
        self._total += samples.size
        return self._emit((self._total - self._pad) // self._unit * self._unit)

    def flush(self) -> np.ndarray:
        """End of stream: the remaining output samples."""
        return self._emit(self._total)

    def _emit(self, end: int) -> np.ndarray:
        if end <= self._start:
            return np.zeros(0, np.float32)
        if self.orig_sr == self.new_sr:
            out = self._buf[self._start - self._lo:end - self._lo]
        else:
            lo, hi = max(0, self._start - self._pad), min(self._total, end + self._pad)
            piece = torch.from_numpy(np.ascontiguousarray(self._buf[lo - self._lo:hi - self._lo]))
            wave = resample(piece, self.orig_sr, self.new_sr).numpy()
            first = (self._start - lo) // self._unit * self._ratio
            out = wave[first:first + -(-(end - self._start) * self.new_sr // self.orig_sr)]
        self._start = end
        keep = max(self._lo, self._start - self._pad)  # the left context of the next piece
        self._buf, self._lo = self._buf[keep - self._lo:], keep
        return np.ascontiguousarray(out, dtype=np.float32)


_RESAMPLE_PAD = 512  # input samples of context per side; covers torchaudio's sinc kernel
