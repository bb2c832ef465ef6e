"""One loaded model, many recognizers: what ``asr serve`` hands to the server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
