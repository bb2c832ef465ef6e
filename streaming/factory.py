"""One loaded model, many recognizers: what ``asr serve`` hands to the server."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from asr.inference import SESSION_FIELDS, InferenceConfig, SettingsError, load_inference
from streaming.recognizer import Recognizer, finalize_batch, process_batch

__all__ = ["RecognizerFactory", "make_recognizer_factory"]

_SERVER_FIELDS = tuple(f.name for f in dataclasses.fields(InferenceConfig) if f.name not in SESSION_FIELDS)


class RecognizerFactory:
    """``factory(settings) -> Recognizer`` for each stream, all sharing one model and LM.

    Args:
        settings: the defaults; its model, LM, device and threads are loaded here once.

    ``settings`` given per stream may change the session fields (:data:`asr.inference.SESSION_FIELDS`)
    only; the others must equal the loaded ones.
    """

    def __init__(self, settings: InferenceConfig) -> None:
        self.settings = settings
        self.loaded, self.lm = load_inference(settings)

    def __call__(self, settings: InferenceConfig | None = None) -> Recognizer:
        settings = self.settings if settings is None else settings
        for name in _SERVER_FIELDS:
            if getattr(settings, name) != getattr(self.settings, name):
                raise SettingsError(name, f"is fixed when the model is loaded ({getattr(self.settings, name)!r}); "
                                          f"got {getattr(settings, name)!r}")
        return Recognizer(self.loaded, settings, lm=self.lm)

    def warm_up(self, streams: int) -> float:
        """Run ``streams`` throwaway streams through the server's batched path (past the first
        ``left_blocks`` blocks, into the cache slots, and finalized) before the first session, so
        that one-time costs land here instead of in the first sessions' passes: CUDA kernels
        loaded on first use, the caching allocator's first blocks, the slot pools. Faint noise,
        results discarded; returns the seconds it took (0 streams: nothing, 0.0)."""
        if streams < 1:
            return 0.0
        began = time.monotonic()
        rate = self.loaded.features.sample_rate
        block_s = (self.settings.block_ms or 640) / 1000
        chunk = int(block_s * rate)
        recs = [self() for _ in range(streams)]
        noise = np.random.default_rng(0).standard_normal(chunk).astype(np.float32) * 1e-3
        for _ in range((self.settings.left_blocks or 0) + 2):
            process_batch([(rec, noise) for rec in recs])
        finalize_batch(recs)
        return time.monotonic() - began

    @staticmethod
    def process_batch(work):
        """The server's batching hook (:func:`streaming.process_batch`)."""
        return process_batch(work)

    @staticmethod
    def finalize_batch(recs):
        """The server's hook for streams that end in one pass (:func:`streaming.finalize_batch`)."""
        return finalize_batch(recs)


def make_recognizer_factory(settings: InferenceConfig | str | Path, **fields: Any) -> RecognizerFactory:
    """A :class:`RecognizerFactory` for ``settings``, or for a model directory with ``fields`` set
    (``make_recognizer_factory("models/default", decoder="ctc", block_ms=320)``)."""
    if not isinstance(settings, InferenceConfig):
        settings = InferenceConfig(model=str(settings), **fields)
    elif fields:
        settings = dataclasses.replace(settings, **fields)
    return RecognizerFactory(settings)
