"""A deterministic fake recognizer for the server tests, the helpers they share, and its own tests.

`FakeRecognizer` follows the `streaming.Recognizer` contract: one word per 100 ms block of audio,
named after a checksum of the block's samples (so the text depends on the audio, not on how it was
cut into frames); a silent block ends the segment (endpoint -> final), and so does every 6th word.
The other server test files import from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np
import pytest

from asr.inference import InferenceConfig
from server.app import AsrServer, serve
from server.config import ServerConfig

BLOCK = 1600  # samples per word (100 ms)
WORDS_PER_SEGMENT = 6
SILENCE = 1e-3


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Result:
    text: str
    is_final: bool
    segment: int
    words: list[Word] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


class FakeRecognizer:
    """Chunking-invariant: any split of the same audio gives the same finals."""

    def __init__(self, fail_on_peak: float | None = None) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)
        self._block_index = 0
        self._segment = 0
        self._words: list[Word] = []
        self._fail_on_peak = fail_on_peak  # raise when a block's peak reaches this (error tests)
        self.finalized = False

    def _word(self, block: np.ndarray) -> Word:
        pcm = np.round(block * 32768.0).astype("<i2").tobytes()
        start = self._block_index * BLOCK / 16000
        return Word(f"w{zlib.crc32(pcm) % 1000}", start, start + BLOCK / 16000)

    def _final(self) -> Result:
        result = Result(" ".join(w.word for w in self._words), True, self._segment, self._words)
        self._segment += 1
        self._words = []
        return result

    def _blocks(self, blocks: list[np.ndarray]) -> list[Result]:
        out: list[Result] = []
        for block in blocks:
            peak = float(np.abs(block).max()) if block.size else 0.0
            if self._fail_on_peak is not None and peak >= self._fail_on_peak:
                raise RuntimeError("fake recognizer: poisoned audio")
            if peak < SILENCE:
                if self._words:
                    out.append(self._final())
            else:
                self._words.append(self._word(block))
                if len(self._words) == WORDS_PER_SEGMENT:
                    out.append(self._final())
            self._block_index += 1
        return out

    def accept_waveform(self, samples: np.ndarray) -> list[Result]:
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert not self.finalized, "accept_waveform after finalize"
        audio = np.concatenate([self._buffer, samples])
        n = audio.size // BLOCK * BLOCK
        self._buffer = audio[n:]
        before = len(self._words)
        out = self._blocks([audio[i : i + BLOCK] for i in range(0, n, BLOCK)])
        if n and (self._words and (len(self._words) != before or out)):
            out.append(Result(" ".join(w.word for w in self._words), False, self._segment))
        return out

    def finalize(self) -> list[Result]:
        assert not self.finalized, "finalize twice"
        self.finalized = True
        out = self._blocks([self._buffer] if self._buffer.size else [])
        self._buffer = np.zeros(0, dtype=np.float32)
        if self._words or not any(r.is_final for r in out):
            out.append(self._final())
        return out


class FakeFactory:
    """`factory(settings=None) -> FakeRecognizer`; keeps what it made and the settings asked for."""

    decoders = ("sar", "ctc")

    def __init__(self, fail_on_peak: float | None = None) -> None:
        self.fail_on_peak = fail_on_peak
        self.made: list[FakeRecognizer] = []
        self.settings: list[InferenceConfig | None] = []

    def __call__(self, settings: InferenceConfig | None = None) -> FakeRecognizer:
        if settings is not None and settings.decoder not in self.decoders:
            raise ValueError(f"the fake has no {settings.decoder!r} decoder; choose one of {', '.join(self.decoders)}")
        rec = FakeRecognizer(self.fail_on_peak)
        self.made.append(rec)
        self.settings.append(settings)
        return rec


class BatchingFakeFactory(FakeFactory):
    """Offers the `process_batch` hook and records the batch sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def process_batch(self, items: list[tuple[FakeRecognizer, np.ndarray]]) -> list[list[Result]]:
        self.batch_sizes.append(len(items))
        return [rec.accept_waveform(samples) for rec, samples in items]


# -- shared helpers ------------------------------------------------------------------------------


def make_audio(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """(n,) int16: noise bursts separated by silences (so there are several endpoints)."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * 16000:
        speech = rng.integers(2, 12) * BLOCK + int(rng.integers(0, BLOCK))
        parts.append((rng.standard_normal(speech) * 3000).clip(-32768, 32767).astype(np.int16))
        parts.append(np.zeros(int(rng.integers(1, 4)) * BLOCK + 800, dtype=np.int16))
        total += speech + parts[-1].size
    return np.concatenate(parts)[: int(seconds * 16000)]


def direct_finals(pcm: np.ndarray) -> list[str]:
    """Final texts from feeding the recognizer directly (the reference for the protocols)."""
    rec = FakeRecognizer()
    results = rec.accept_waveform(pcm.astype(np.float32) / 32768.0) + rec.finalize()
    return [r.text for r in results if r.is_final]


def random_frames(pcm: np.ndarray, seed: int, max_samples: int = 5000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(1, max_samples, size=pcm.size // 2 + 1))
    cuts = cuts[cuts < pcm.size]
    return np.split(pcm, cuts)


class FakeClock:
    """The server's `sleep` (start deadline, idle timeout) under the test's control: a sleep ends
    only when `advance()` moves the clock past its deadline, never by itself."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleeps: list[tuple[float, float, asyncio.Future[None], asyncio.Task[Any] | None]] = []

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        entry = (seconds, self.now + seconds, future, asyncio.current_task())
        self._sleeps.append(entry)
        try:
            await future
        finally:
            self._sleeps.remove(entry)

    def sleeping(self, seconds: float) -> int:
        """How many sleeps of `seconds` are waiting (not being cancelled)."""
        return sum(1 for s, _, _, task in self._sleeps if s == seconds and not (task and task.cancelling()))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for _, deadline, future, _ in list(self._sleeps):
            if deadline <= self.now and not future.done():
                future.set_result(None)


@contextlib.asynccontextmanager
async def running(factory: Any = None, clock: FakeClock | None = None, **overrides: Any) -> AsyncIterator[AsrServer]:
    config = ServerConfig(port=0, model_name="fake", inference=InferenceConfig(decoder="sar", block_ms=640), **overrides)
    async with serve(config, factory or FakeFactory(), clock.sleep if clock else asyncio.sleep) as server:
        yield server


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=300))  # a hang guard, not a time limit: generous under load


# -- tests of the fake itself ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fake_is_chunking_invariant(seed: int) -> None:
    pcm = make_audio(3.0, seed)
    reference = direct_finals(pcm)
    assert len(reference) >= 2 and all(reference[:-1])  # the last final (finalize) may be empty
    rec = FakeRecognizer()
    results = []
    for frame in random_frames(pcm, seed + 10):
        results += rec.accept_waveform(frame.astype(np.float32) / 32768.0)
    results += rec.finalize()
    assert [r.text for r in results if r.is_final] == reference
    segments = [r.segment for r in results if r.is_final]
    assert segments == list(range(len(segments)))


def test_fake_factory_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="the fake has no 'bsbs' decoder"):
        FakeFactory()(InferenceConfig(decoder="bsbs"))
