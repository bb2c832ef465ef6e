"""Cache slots: the steady-state encoder caches of many streams, one tensor per layer.

A server steps hundreds of streams in one pass (:meth:`ConformerEncoder.step_batch`). Streams
whose attention caches have the same length (with a bounded left context: every stream from its
fifth block on, at 640 ms blocks and 4 blocks of left context) have caches of the same shape; a
:class:`SlotPool` per length keeps them as rows of one key, one value and one conv tensor per
layer. A pass gathers the rows of the streams it steps (one ``index_select`` per tensor), runs the
layers over them as a batch and writes the new caches back (one ``index_copy_`` per tensor). With a
cache object and a row view per stream, layer and tensor instead, splitting the batch back into
streams was 44 % of a 1024-stream pass's host time on the H200 (issue 15).

A state whose caches live in a slot reads them through :class:`SlotKV` and :class:`SlotConv`,
which behave as the tuples of :class:`~asr.attention.KVCache` and conv tensors a state holds
otherwise (views of the slot's rows, to be read before the next batched step). The batched step
that advances a slotted state writes its slot, so it consumes that state: stepping or reading the
older state afterwards raises instead of giving the newer block's caches. ``step`` (one stream)
never writes a slot. A slot goes back to its pool when the last state naming it is garbage
collected; a pool with no slot in use frees its tensors.
"""

from __future__ import annotations

import threading
import weakref
from typing import Sequence

import numpy as np
import torch

from asr.attention import KVCache

__all__ = ["Slot", "SlotPool", "SlotKV", "SlotConv", "pool_for"]


class SlotPool:
    """Rows of per-layer key, value and conv tensors of one shape, device and dtype, lent to streams.

    Args:
        n_layers: layers (one key, value and conv tensor each).
        kv_shape: (heads, positions, head_dim) of one stream's key (and value) cache.
        conv_shape: (kernel - 1, d_model) of one stream's conv cache.
    """

    def __init__(self, n_layers: int, kv_shape: tuple[int, ...], conv_shape: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype):
        self.n_layers, self.kv_shape, self.conv_shape = n_layers, tuple(kv_shape), tuple(conv_shape)
        self.device, self.dtype = device, dtype
        self.version: list[int] = []  # per slot: bumped by every write and release
        self._free: list[int] = []
        self._lock = threading.Lock()  # slots are released from whichever thread drops the last state
        self.used = 0
        self._empty_tensors()

    def _empty_tensors(self) -> None:
        self.k = [torch.zeros(0, *self.kv_shape, device=self.device, dtype=self.dtype) for _ in range(self.n_layers)]
        self.v = [t.clone() for t in self.k]
        self.conv = [torch.zeros(0, *self.conv_shape, device=self.device, dtype=self.dtype)
                     for _ in range(self.n_layers)]

    @property
    def capacity(self) -> int:
        return len(self.version)

    def allocate(self, n: int) -> list["Slot"]:
        """``n`` free slots (the pool grows, doubling, when it has too few)."""
        with self._lock:
            if len(self._free) < n:
                self._grow(n - len(self._free))
            indices = [self._free.pop() for _ in range(n)]
            self.used += n
        return [Slot(self, i) for i in indices]

    def _grow(self, need: int) -> None:
        old = self.capacity
        extra = max(old, need, 16)
        self.k = [torch.cat([t, t.new_zeros(extra, *self.kv_shape)]) for t in self.k]
        self.v = [torch.cat([t, t.new_zeros(extra, *self.kv_shape)]) for t in self.v]
        self.conv = [torch.cat([t, t.new_zeros(extra, *self.conv_shape)]) for t in self.conv]
        self.version += [0] * extra
        self._free += range(old + extra - 1, old - 1, -1)  # the lowest rows first

    def release(self, index: int) -> None:
        with self._lock:
            self.version[index] += 1
            self._free.append(index)
            self.used -= 1
            if not self.used:  # nothing lent: give the memory back
                self.version, self._free = [], []
                self._empty_tensors()

    def index(self, slots: Sequence["Slot"]) -> torch.Tensor:
        """The rows of ``slots`` as an index tensor on the pool's device (each slot at most once)."""
        rows = [s.index for s in slots]
        if len(set(rows)) != len(rows):
            raise RuntimeError("step_batch got the same stream's state twice")
        return torch.from_numpy(np.array(rows, dtype=np.int64)).to(self.device)  # (torch.tensor of a list: ~5 us a row)

    def gather(self, index: torch.Tensor, start: int, max_len: int | None
               ) -> tuple[tuple[KVCache, ...], tuple[torch.Tensor, ...]]:
        """The caches of the rows ``index`` as one batched state's ``kv`` and ``conv`` (copies)."""
        kv = tuple(KVCache(k.index_select(0, index), v.index_select(0, index), start, max_len)
                   for k, v in zip(self.k, self.v))
        return kv, tuple(c.index_select(0, index) for c in self.conv)

    def scatter(self, slots: Sequence["Slot"], index: torch.Tensor, kv: Sequence[KVCache],
                conv: Sequence[torch.Tensor]) -> list[int]:
        """Write a batched state's caches into the rows ``index`` (of ``slots``); returns the slots'
        new versions (the states that named the old contents are consumed)."""
        for l in range(self.n_layers):
            self.k[l].index_copy_(0, index, kv[l].k)
            self.v[l].index_copy_(0, index, kv[l].v)
            self.conv[l].index_copy_(0, index, conv[l])
        version = self.version
        for s in slots:
            version[s.index] += 1
        return [version[s.index] for s in slots]


class Slot:
    """One row of a :class:`SlotPool`, held by the states of one stream; released when they are gone."""

    __slots__ = ("pool", "index", "__weakref__")

    def __init__(self, pool: SlotPool, index: int):
        self.pool, self.index = pool, index
        weakref.finalize(self, pool.release, index)


class _SlotRows(Sequence):
    """One layer's rows of a slot per index, for a state that names the slot at ``version``."""

    __slots__ = ("slot", "version")

    def __init__(self, slot: Slot, version: int):
        self.slot, self.version = slot, version

    def check(self) -> None:
        if self.slot.pool.version[self.slot.index] != self.version:
            raise RuntimeError("this encoder state was consumed by a later step_batch, which wrote the "
                               "stream's cache slot: step the state that call returned")

    def __len__(self) -> int:
        return self.slot.pool.n_layers

    def __getitem__(self, layer):
        if isinstance(layer, slice):
            return tuple(self[i] for i in range(len(self))[layer])
        self.check()
        return self._row(self.slot.pool, self.slot.index, layer)

    def _row(self, pool: SlotPool, i: int, layer: int):
        raise NotImplementedError


class SlotKV(_SlotRows):
    """A slotted state's ``kv``: per layer a :class:`KVCache` over the slot's rows (batch 1)."""

    __slots__ = ("start", "max_len")

    def __init__(self, slot: Slot, version: int, start: int, max_len: int | None):
        super().__init__(slot, version)
        self.start, self.max_len = start, max_len

    @property
    def length(self) -> int:
        return self.slot.pool.kv_shape[1]

    def _row(self, pool: SlotPool, i: int, layer: int) -> KVCache:
        return KVCache(pool.k[layer][i:i + 1], pool.v[layer][i:i + 1], self.start, self.max_len)


class SlotConv(_SlotRows):
    """A slotted state's ``conv``: per layer the slot's (1, kernel - 1, D) conv cache."""

    __slots__ = ()

    def _row(self, pool: SlotPool, i: int, layer: int) -> torch.Tensor:
        return pool.conv[layer][i:i + 1]


_POOLS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, SlotPool]]" = weakref.WeakKeyDictionary()


def pool_for(encoder: torch.nn.Module, kv: KVCache, conv: torch.Tensor, n_layers: int) -> SlotPool:
    """The pool of ``encoder``'s slots for caches shaped as the batched ``kv`` and ``conv`` rows."""
    key = (kv.k.device, kv.k.dtype, tuple(kv.k.shape[1:]), tuple(conv.shape[1:]))
    pools = _POOLS.setdefault(encoder, {})
    if key not in pools:
        pools[key] = SlotPool(n_layers, key[2], key[3], kv.k.device, kv.k.dtype)
    return pools[key]
