"""Language context that lasts a whole session: the LM keeps the finals of earlier segments.

A session is one token stream ``<s> seg_1 <s> seg_2 <s> ...`` where ``<s>`` is ``<sos/eos>``
(id 2): it ends one segment and starts the next, just as the LM saw it in training. The session
keeps paged KV caches (:class:`~asr.attention.paged_cache.PagedKVCache`, PagedEviction) over
everything but the last ``<s>``; a segment's beam search starts from them, and its prefixes
(``<s>`` first, as every scorer's) continue the stream. Scoring segment ``n`` this way equals
scoring the concatenated stream in one pass while nothing was evicted (tested).

Use (shallow fusion in bsbs or the offline search; ``lm`` arguments accept a scorer)::

    session = SessionLM(lm, SessionContextConfig(max_tokens=512))
    for segment in segments:
        tokens = decode(segment, lm=session.scorer())   # BsbsDecoder(..., lm=...) / offline_decode
        session.commit(tokens.ids)                       # the final: context for the next segment

The first segment of a session scores exactly as without session context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.attention.paged_cache import PagedCacheConfig, PagedKVCache
from asr.models.lm import LMScorer, LMState, TransformerLM
from asr.search.scorer import SOS_EOS, Memory

__all__ = ["SessionContextConfig", "SessionLM", "SessionLMScorer"]


@dataclass(frozen=True)
class SessionContextConfig:
    """Attributes:
        max_tokens: LM context carried across segments, in tokens (``--session-context N``);
            rounded down to whole pages; None = unbounded (the whole session, memory grows).
        page_size: tokens per KV page.
        sink_pages, recent_pages: pages PagedEviction never evicts (oldest / newest).
    """

    max_tokens: int | None = 512
    page_size: int = 16
    sink_pages: int = 1
    recent_pages: int = 2

    @classmethod
    def for_tokens(cls, max_tokens: int) -> "SessionContextConfig":
        """The config of ``--session-context max_tokens``: pages of 16 tokens, smaller for small
        budgets (at least 4 pages: a sink, two recent, one to evict), so that the kept context
        is about ``max_tokens`` (at most ``max_tokens`` full-page tokens plus the open page)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        return cls(max_tokens=max_tokens, page_size=max(1, min(16, max_tokens // 4)))

    def paged(self) -> PagedCacheConfig:
        budget = None if self.max_tokens is None else max(self.max_tokens // self.page_size,
                                                          self.sink_pages + self.recent_pages + 1)
        return PagedCacheConfig(self.page_size, budget, self.sink_pages, self.recent_pages)


class SessionLM:
    """The LM state of one recognition session (one per stream; not thread-safe)."""

    def __init__(self, lm: TransformerLM, cfg: SessionContextConfig = SessionContextConfig()):
        self.lm, self.cfg = lm, cfg
        self.caches: list[PagedKVCache] = lm.empty_paged_caches(1, lm.embed.weight.device, cfg.paged())
        self.committed = 0  # segments committed

    @property
    def position(self) -> int:
        """Stream position of the next ``<s>`` (tokens seen so far)."""
        return self.caches[0].end

    @property
    def nbytes(self) -> int:
        """KV memory of the session context, all layers."""
        return sum(c.nbytes for c in self.caches)

    def scorer(self) -> "SessionLMScorer":
        """A scorer for the next segment's search, starting from the committed context."""
        return SessionLMScorer(self.lm, self)

    @torch.no_grad()
    def commit(self, ids: list[int]) -> torch.Tensor:
        """Append a segment's final token ids (without ``<s>``) to the session context.

        Returns:
            (len(ids) + 1,) log-probabilities of ``ids`` and of the closing ``<s>`` given the
            context (the segment's LM score; perplexity of a session).
        """
        tokens = torch.tensor([[SOS_EOS, *ids]], device=self.lm.embed.weight.device)
        # Chunks end on page boundaries, so pages are evicted exactly when a token-by-token feed would.
        p, i, hidden = self.cfg.page_size, 0, []
        while i < tokens.shape[1]:
            j = min(tokens.shape[1], (self.position // p + 1) * p - self.position + i)
            h, self.caches = self.lm.extend(tokens[:, i:j], self.caches)
            hidden.append(h[0])
            i = j
        self.committed += 1
        logp = self.lm.out(torch.cat(hidden)).float().log_softmax(-1)  # (len(ids) + 1, V)
        targets = torch.tensor([*ids, SOS_EOS], device=logp.device)
        return logp.gather(1, targets[:, None])[:, 0]

    def reset(self) -> None:
        """Forget the context (a new session)."""
        self.__init__(self.lm, self.cfg)


class SessionLMScorer(LMScorer):
    """:class:`LMScorer` whose hypotheses start from the session's committed context."""

    def __init__(self, lm: TransformerLM, session: SessionLM):
        super().__init__(lm)
        self.session = session

    def init_state(self, memory: Memory) -> LMState:
        return LMState(list(self.session.caches))  # immutable caches: the search cannot alter them
