"""What the server needs from `streaming` (docs/INTERFACES.md, "Streaming"), as structural types.

The server never imports `streaming` at module level: it is handed a *recognizer factory*.

Factory contract (what `streaming.make_recognizer_factory(settings)` returns):

- `factory(settings: asr.inference.InferenceConfig | None = None) -> Recognizer`, one per stream;
  the session's settings are the server's defaults (`ServerConfig.inference`) with the start
  message's overrides applied; `None` means the factory's defaults. Settings the factory cannot
  serve raise `ValueError` with a readable message (sent to the client as error code `bad_option`).
- optional `factory.process_batch(items: list[tuple[Recognizer, np.ndarray]]) -> list[list[Result]]`:
  run `accept_waveform` for several streams at once (e.g. one batched encoder step); must return
  exactly what calling `rec.accept_waveform(samples)` for each item in turn would return.
  If it raises, every stream of that batch gets an `internal` error (it cannot tell whose input
  failed). Without it the scheduler calls the recognizers one after another, and one stream's
  exception affects that stream only.
- optional `factory.finalize_batch(recs: list[Recognizer]) -> list[list[Result]]`: `finalize` for
  several streams that end in the same pass; must return exactly what `rec.finalize()` for each
  would return. If it raises, every stream of that call gets an `internal` error. Without it (or
  for a single stream) the scheduler calls `finalize` per stream.

Optional recognizer members the scheduler uses when present (`streaming.Recognizer` has both):
`samples_until_block() -> int | None`, the samples the stream needs before its next result can
come (None: no such bound), and `block_samples`, the samples per block after that one; with them a
stream's audio short of a block is held out of the passes (`Scheduler.hold_s`, and in the fronts
under `--workers`).

All factory and recognizer calls happen on one worker thread, so the model is used by one thread.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from asr.inference import InferenceConfig

__all__ = ["Word", "Result", "Recognizer", "RecognizerFactory", "process_sequential", "result_words"]


class Word(Protocol):
    word: str
    start: float  # seconds from the start of the stream
    end: float


class Result(Protocol):
    text: str
    is_final: bool
    segment: int
    words: Sequence[Any]  # Sequence[Word]


@runtime_checkable
class Recognizer(Protocol):
    def accept_waveform(self, samples: np.ndarray) -> list[Result]:
        """samples: (n,) float32 in [-1, 1] at 16 kHz -> partial and final results, in order."""
        ...

    def finalize(self) -> list[Result]:
        """Flush the stream; the list ends with the last final."""
        ...


class RecognizerFactory(Protocol):
    def __call__(self, settings: InferenceConfig | None = None) -> Recognizer: ...


def process_sequential(items: list[tuple[Recognizer, np.ndarray]]) -> list[list[Result]]:
    """The default batch hook: `accept_waveform` on each stream in turn."""
    return [rec.accept_waveform(samples) for rec, samples in items]


def result_words(result: Result) -> list[tuple[str, float, float]]:
    """`(word, start_s, end_s)` for each word of `result` (empty when it carries none)."""
    return [(str(w.word), float(w.start), float(w.end)) for w in (getattr(result, "words", None) or [])]
