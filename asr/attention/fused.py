"""One matrix product for several linear layers that read the same input (inference only).

Self-attention projects its input three times (q, k, v); a streaming encoder step at batch 1 makes
those three small products per layer, and at that size the dispatch, and for int8 layers the
quantization of the input, cost about as much as the arithmetic. :class:`FusedLinears` runs them
as one product with the layers' weights stacked, built on first use and rebuilt when a weight
changes (``load_state_dict``, an optimiser step, ``.to()``) or a layer is replaced (the int8
kernels of :func:`asr.models.compress.to_int8_kernels`).

Supported layers: ``nn.Linear`` (one ``F.linear`` on the concatenated weights and biases), and any
layer type with a ``concat`` classmethod that turns a list of its layers into one layer whose
output is their outputs side by side (:class:`asr.models.compress.Int8Linear`). For anything else
:meth:`FusedLinears.get` returns None and the caller runs the layers one by one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FusedLinears"]


class FusedLinears:
    """The fused layer of some linear layers, cached against their identity and weights.

    Not a module (it must not add to the owner's parameters or state dict): the owner keeps one
    and asks :meth:`get` with its current layers on every call. Without autograd only: the
    stacked weights are a copy that gradients would not reach. Pickling or copying it gives an
    empty cache (the copy's layers have their own weights).
    """

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        # (layers, their parameter versions, fused layer or None), replaced as a whole
        self._entry: tuple[tuple[nn.Module, ...], tuple, Callable | None] = ((), (), None)

    def __reduce__(self):
        return (FusedLinears, ())

    def get(self, layers: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A function of (..., K) -> (..., sum of the layers' N): their outputs concatenated, or
        None where the layers cannot be fused."""
        cached, versions, fn = self._entry
        now = _versions(layers)
        if len(layers) != len(cached) or any(a is not b for a, b in zip(layers, cached)) or now != versions:
            fn = _fuse(layers)
            self._entry = (tuple(layers), now, fn)
        return fn


class _StackedLinear:
    """``F.linear`` with the stacked weights (sum N, K) and biases of some ``nn.Linear`` layers."""

    __slots__ = ("weight", "bias")

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        with torch.no_grad():
            self.weight = torch.cat([m.weight for m in layers])
            self.bias = None
            if any(m.bias is not None for m in layers):
                self.bias = torch.cat([m.weight.new_zeros(m.out_features) if m.bias is None else m.bias
                                       for m in layers])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _versions(layers: Sequence[nn.Module]) -> tuple:
    """Where each parameter of ``layers`` lives and how often it was written in place."""
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version)
                 for m in layers for t in m._parameters.values() if t is not None)


def _fuse(layers: Sequence[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    kind = type(layers[0])
    if any(type(m) is not kind for m in layers) or len({getattr(m, "in_features", None) for m in layers}) != 1:
        return None
    if kind is nn.Linear:
        return _StackedLinear(layers)
    concat = getattr(kind, "concat", None)
    return None if concat is None else concat(list(layers))
