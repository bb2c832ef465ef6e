"""A bounded key/value cache for streaming self-attention and autoregressive decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KVCache"]


@dataclass(frozen=True)
class KVCache:
    """Projected keys and values of the most recent positions, per head.

    Attributes:
        k: (B, H, T, head_dim) keys (already rotated when the attention uses rotary positions).
        v: (B, H, T, head_dim) values.
        start: absolute position of ``k[:, :, 0]``; the cache covers ``start .. start + T - 1``.
        max_len: keep at most this many positions (the most recent); ``None`` = unbounded.

    The cache is immutable: :meth:`append` returns a new one. ``T`` may be 0 (nothing cached
    yet); that is an ordinary empty sequence, not a sentinel.
    """

    k: torch.Tensor
    v: torch.Tensor
    start: int
    max_len: int | None

    @classmethod
    def empty(
        cls,
        batch_size: int,
        n_heads: int,
        head_dim: int,
        max_len: int | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        start: int = 0,
    ) -> "KVCache":
        """An empty cache whose next position is ``start``."""
        if max_len is not None and max_len < 0:
            raise ValueError(f"max_len must be >= 0 or None, got {max_len}")
        z = torch.zeros(batch_size, n_heads, 0, head_dim, device=device, dtype=dtype)
        return cls(k=z, v=z.clone(), start=start, max_len=max_len)

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self.k.shape[-2]

    @property
    def end(self) -> int:
        """Absolute position that the next appended key will get."""
        return self.start + self.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """Append (B, H, t, head_dim) keys/values and drop the oldest beyond ``max_len``."""
        return KVCache(torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2), self.start, self.max_len).trimmed()

    def trimmed(self) -> "KVCache":
        """This cache with only the last ``max_len`` positions kept."""
        if self.max_len is None or self.length <= self.max_len:
            return self
        drop = self.length - self.max_len
        return KVCache(self.k[..., drop:, :], self.v[..., drop:, :], self.start + drop, self.max_len)

    def select(self, index: torch.Tensor) -> "KVCache":
        """Reorder/select batch entries (beam search): ``index`` (N,) into the batch dim."""
        return KVCache(self.k.index_select(0, index), self.v.index_select(0, index), self.start, self.max_len)
