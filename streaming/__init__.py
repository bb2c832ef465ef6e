"""Stateful streaming recognition: online features, block decoders, endpointing, results.

The names below are imported on first use (PEP 562), not with the package: ``streaming.cli`` and
``streaming.subtitles`` are imported by ``asr --help`` and must not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming.endpoint import EndpointConfig, Endpointer
    from streaming.factory import RecognizerFactory, make_recognizer_factory
    from streaming.recognizer import Recognizer, Result, finalize_batch, process_batch

__all__ = ["EndpointConfig", "Endpointer", "Recognizer", "RecognizerFactory", "Result", "finalize_batch",
           "make_recognizer_factory", "process_batch"]



def __getattr__(name: str) -> Any:
    if name in ("EndpointConfig", "Endpointer"):
        from streaming import endpoint as module
    elif name in ("RecognizerFactory", "make_recognizer_factory"):
        from streaming import factory as module
    elif name in ("Recognizer", "Result", "finalize_batch", "process_batch"):
        from streaming import recognizer as module
    else:
        raise AttributeError(f"module 'streaming' has no attribute {name!r}")
    return getattr(module, name)
