"""The bytes a recognizer's state holds: a structural measure of whether a stream's memory is bounded.

:func:`state_bytes` walks every tensor, numpy array and list reachable from a Recognizer's
attributes other than the shared model, tokenizer and LM (encoder state, decoder, endpointer,
feature buffer). A stream with bounded state gives the same order of bytes after minute 1 as after
minute 60; RSS that grows while this stays flat is the allocator, not the code.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

__all__ = ["state_bytes", "SHARED"]

# attributes that belong to the model, shared by every stream, not to one stream's state
SHARED = ("loaded", "model", "tokenizer", "lm", "cfg")


def _walk(obj, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (torch.nn.Module, type)) or callable(obj) and not hasattr(obj, "__dict__"):
        return 0
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return 8
    if isinstance(obj, dict):
        return sum(_walk(k, seen) + _walk(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)) or hasattr(obj, "__len__") and hasattr(obj, "__iter__") \
            and not hasattr(obj, "__dict__"):
        try:
            return 8 + sum(_walk(x, seen) for x in obj)
        except TypeError:
            return 8
    if dataclasses.is_dataclass(obj):
        return sum(_walk(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if hasattr(obj, "__dict__"):
        return sum(_walk(v, seen) for k, v in vars(obj).items())
    if hasattr(obj, "__slots__"):
        return sum(_walk(getattr(obj, k, None), seen) for k in obj.__slots__)
    return 8


def state_bytes(rec) -> int:
    """Bytes of tensors, arrays and list entries held by one recognizer (not the shared model)."""
    seen: set[int] = set()
    for name in SHARED:
        value = getattr(rec, name, None)
        if value is not None:
            seen.add(id(value))
    # the decoder holds the model and LM too: mark them shared before walking
    for name in ("model", "lm"):
        value = getattr(rec, name, None)
        if value is not None:
            seen.add(id(value))
    return sum(_walk(v, seen) for k, v in vars(rec).items() if k not in SHARED)
