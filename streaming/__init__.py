"""Stateful streaming recognition: online features, block decoders, endpointing, results."""

from streaming.endpoint import EndpointConfig, Endpointer
from streaming.recognizer import DECODERS, Recognizer, RecognizerConfig, Result, process_batch

__all__ = ["DECODERS", "EndpointConfig", "Endpointer", "Recognizer", "RecognizerConfig", "Result",
           "make_recognizer_factory", "process_batch"]


def make_recognizer_factory(model_dir, decoder: str = "sar", block_ms: int = 640, device: str = "cpu", **options):
    """Load a model once; return ``factory(decoder=None, block_ms=None) -> Recognizer`` sharing it
    (for the server; None keeps the default given here). Unsupported options raise ValueError."""
    import dataclasses

    from asr.models.io import load_model_dir

    loaded = load_model_dir(model_dir, device)
    base = RecognizerConfig(decoder=decoder, block_ms=block_ms, **options)

    def factory(decoder: str | None = None, block_ms: int | None = None) -> Recognizer:
        overrides = {k: v for k, v in (("decoder", decoder), ("block_ms", block_ms)) if v is not None}
        return Recognizer(loaded, dataclasses.replace(base, **overrides) if overrides else base)

    factory.loaded = loaded
    factory.config = base
    factory.process_batch = process_batch  # the server batches the encoder steps of its sessions
    return factory
