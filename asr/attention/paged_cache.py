"""A paged KV cache with PagedEviction (Chitty-Venkata et al., 2025): keys/values live in
fixed-size pages; once more than ``budget_pages`` pages are full, whole pages are evicted by a
block-wise importance score, so memory stays bounded however long the session.

Importance (the paper's attention-free proxy): token ``i`` scores ``||v_i|| / ||k_i||`` (L2 norms
of its value and of its *unrotated* key, averaged over heads and batch rows), a page scores the
mean over its tokens, and the lowest page is evicted. It needs no attention weights, so any
kernel (SDPA, FlashAttention) stays usable, and a page's score is fixed once the page is full: the
decision is the same for every beam hypothesis that shares the page. The first ``sink_pages``
(attention sinks) and the newest ``recent_pages`` full pages are never evicted.

Keys are cached already rotated (rotary/xpos) at their true positions, so attention over the
surviving, non-contiguous positions needs no position bookkeeping; ``pos`` records them for tests
and statistics. XPos keys count their decay from a reference ``ref`` that follows the stream
(:meth:`~asr.attention.xpos.XPosEmbedding.rebase_keys`), so no scale overflows in a long session.
The open (partly filled) page is the cache's tail.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from asr.attention.mha import MultiHeadAttention

__all__ = ["PagedCacheConfig", "PagedKVCache", "paged_self_attention"]

_REBASE = 16  # xpos: the reference moves in steps of this many scale_base


@dataclass(frozen=True)
class PagedCacheConfig:
    """Attributes:
        page_size: tokens per page.
        budget_pages: full pages kept at most (None = never evict); the cache holds at most
            ``budget_pages * page_size + page_size - 1`` tokens.
        sink_pages: oldest pages that are never evicted (attention sinks).
        recent_pages: newest full pages that are never evicted.
    """

    page_size: int = 16
    budget_pages: int | None = None
    sink_pages: int = 1
    recent_pages: int = 1

    def __post_init__(self) -> None:
        if self.page_size < 1 or self.sink_pages < 0 or self.recent_pages < 0:
            raise ValueError(f"bad paged cache config {self}")
        if self.budget_pages is not None and self.budget_pages < self.sink_pages + self.recent_pages + 1:
            raise ValueError(f"budget_pages={self.budget_pages} must exceed sink_pages + recent_pages "
                             f"({self.sink_pages} + {self.recent_pages}) to leave something to evict")

    @property
    def max_tokens(self) -> int | None:
        """Upper bound on cached tokens (None = unbounded)."""
        return None if self.budget_pages is None else (self.budget_pages + 1) * self.page_size - 1


@dataclass(frozen=True)
class PagedKVCache:
    """Immutable paged cache of one attention layer (``append`` returns a new one).

    Attributes:
        k, v: (B, H, N, head_dim); tokens ``[p * page_size, (p + 1) * page_size)`` form page ``p``,
            the last ``N % page_size`` tokens the open page.
        pos: (N,) absolute positions of the cached tokens (increasing).
        score: (N,) per-token importance ``||v|| / ||k||``.
        end: absolute position of the next token.
        evicted: number of pages evicted so far.
        cfg: page size and budget.
        ref: position the xpos decay of the cached keys is counted from (kept near ``end``).
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    score: torch.Tensor
    end: int
    evicted: int
    cfg: PagedCacheConfig
    ref: int = 0

    @classmethod
    def empty(cls, batch_size: int, n_heads: int, head_dim: int, cfg: PagedCacheConfig,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> "PagedKVCache":
        z = torch.zeros(batch_size, n_heads, 0, head_dim, device=device, dtype=dtype)
        none = torch.zeros(0, dtype=torch.long, device=device)
        return cls(z, z.clone(), none, torch.zeros(0, device=device), 0, 0, cfg)

    @property
    def length(self) -> int:
        return self.k.shape[-2]

    @property
    def full_pages(self) -> int:
        return self.length // self.cfg.page_size

    @property
    def nbytes(self) -> int:
        """Bytes held by keys and values."""
        return 2 * self.k.numel() * self.k.element_size()

    def append(self, k: torch.Tensor, v: torch.Tensor, score: torch.Tensor) -> "PagedKVCache":
        """Add (B, H, t, head_dim) keys/values with (t,) importances, then evict down to the budget."""
        t = k.shape[-2]
        pos = torch.arange(self.end, self.end + t, device=self.pos.device)
        out = PagedKVCache(torch.cat([self.k, k], -2), torch.cat([self.v, v], -2), torch.cat([self.pos, pos]),
                           torch.cat([self.score, score.to(self.score)]), self.end + t, self.evicted, self.cfg,
                           self.ref)
        return out._evicted()

    def _evicted(self) -> "PagedKVCache":
        c, cache = self.cfg, self
        if c.budget_pages is None:
            return cache
        p = c.page_size
        while cache.full_pages > c.budget_pages:
            n = cache.full_pages
            page_scores = cache.score[: n * p].view(n, p).mean(-1)
            lo, hi = c.sink_pages, n - c.recent_pages  # evictable pages lo .. hi - 1
            victim = lo + int(page_scores[lo:hi].argmin())
            keep = torch.ones(cache.length, dtype=torch.bool, device=cache.k.device)
            keep[victim * p : (victim + 1) * p] = False
            cache = PagedKVCache(cache.k[:, :, keep], cache.v[:, :, keep], cache.pos[keep], cache.score[keep],
                                 cache.end, cache.evicted + 1, c, cache.ref)
        return cache

    def select(self, index: torch.Tensor) -> "PagedKVCache":
        """Reorder/select batch rows (beam search): ``index`` (N,)."""
        return replace(self, k=self.k.index_select(0, index), v=self.v.index_select(0, index))


def paged_self_attention(
    mha: MultiHeadAttention, x: torch.Tensor, cache: PagedKVCache, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, PagedKVCache]:
    """Causal self-attention of new positions ``cache.end ..`` against a paged cache.

    By default the new tokens see every cached token and, causally, each other; eviction happens
    after they are appended (so they never lose a key while being computed).

    Args:
        mha: the layer's attention (``pos`` none, rotary or xpos).
        x: (B, t, D) new positions.
        cache: the layer's :class:`PagedKVCache`.
        mask: (t, cache.length + t) bool over ``[cached tokens, new tokens]`` (True = may attend)
            instead of the default; build it from ``cache.pos`` for position-dependent patterns.

    Returns:
        y (B, t, D) and the new cache.
    """
    if mha.pos == "rel":
        raise ValueError("paged caches hold rotated keys; pos='rel' needs contiguous positions")
    t, n = x.shape[1], cache.length
    if mha.pos == "xpos":
        # keep the decay reference near the newest position (a function of it alone, so any feed
        # order gives the same reference): old keys shrink by their decay, nothing grows
        every = max(1, int(_REBASE * mha.xpos.scale_base))
        ref = cache.end // every * every
        if ref != cache.ref:
            cache = replace(cache, k=mha.xpos.rebase_keys(cache.k, cache.ref, ref), ref=ref)
    q, k, v = mha.project_self(x, cache.end, xpos_ref=cache.ref)
    k_all, v_all = torch.cat([cache.k, k], -2), torch.cat([cache.v, v], -2)
    if mask is None and t > 1:
        mask = torch.ones(t, n + t, dtype=torch.bool, device=x.device).tril(n)
    y = mha.merge_heads(mha.attend(q, k_all, v_all, mask=mask))
    with torch.no_grad():
        k_raw = mha.k_proj(x).unflatten(-1, (mha.n_heads, mha.head_dim))  # (B, t, H, dh), before rotation
        score = (v.float().norm(dim=-1) / k_raw.float().norm(dim=-1).transpose(1, 2).clamp_min(1e-6)).mean((0, 1))
    return y, cache.append(k, v, score)
