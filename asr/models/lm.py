"""Transformer language model on the shared attention core; also the SAR decoder's LM subnetwork.

Positions (``LMConfig.pos``): rotary (``rope``, the default and the shipped models'), XPos
(``xpos``, rotary with exponential decay, made to extrapolate past the training length) or none.
``LMConfig.longgen`` makes two of every three layers LongGen sparse (window + sinks + strided
blocks). At inference ``hidden(..., block_size=b)`` runs the XPos paper's blockwise causal
attention. Decoding keeps one KV cache per layer: a bounded :class:`~asr.attention.KVCache`, or a
:class:`~asr.attention.paged_cache.PagedKVCache` with PagedEviction (session context,
:mod:`asr.models.lm_session`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from asr.attention import BeamKVCache, KVCache, causal_mask
from asr.attention.masks import longgen_allowed
from asr.attention.paged_cache import PagedCacheConfig, PagedKVCache, paged_self_attention
from asr.attention.xpos import blockwise_causal_mask
from asr.models.config import LMConfig
from asr.models.layers import TransformerLayer
from asr.models.losses import Losses, add_sos_eos
from asr.search.scorer import Memory

__all__ = ["TransformerLM", "LMScorer", "LMState", "LayerCache"]

LayerCache = Union[KVCache, PagedKVCache]
_ATTN_POS = {"rope": "rotary", "xpos": "xpos", "none": "none"}


class TransformerLM(nn.Module):
    """Causal transformer LM: embedding -> self-attention layers -> norm -> vocabulary."""

    def __init__(self, vocab_size: int, cfg: LMConfig):
        super().__init__()
        if cfg.pos not in _ATTN_POS:
            raise ValueError(f"LMConfig.pos must be one of {sorted(_ATTN_POS)}, got {cfg.pos!r}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.dropout, pos=_ATTN_POS[cfg.pos],
                             xpos_scale_base=cfg.xpos_scale_base) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, vocab_size)

    # ------------------------------------------------------------------ masks
    def _window(self, layer: int) -> int | None:
        """LongGen window of ``layer`` (None = full causal attention)."""
        g = self.cfg.longgen
        return None if g is None else g.layer_window(layer)

    def allowed(self, layer: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Structural mask of ``layer`` between absolute positions: (T_q,) x (T_k,) -> (T_q, T_k) bool."""
        g = self.cfg.longgen
        window = self._window(layer)
        if window is None:
            return k_pos[None, :] <= q_pos[:, None]
        return longgen_allowed(q_pos[:, None], k_pos[None, :], window, g.sinks, g.block_size, g.stride)

    def layer_mask(self, layer: int, n: int, device: torch.device, block_size: int | None = None) -> torch.Tensor:
        """(n, n) self-attention mask of ``layer`` (positions 0 .. n-1); ``block_size``: blockwise causal."""
        if self._window(layer) is None and block_size is None:
            return causal_mask(n, device=device)
        pos = torch.arange(n, device=device)
        mask = self.allowed(layer, pos, pos)
        return mask if block_size is None else mask & blockwise_causal_mask(n, block_size, device)

    # ------------------------------------------------------------------ full sequences
    def hidden(self, inputs: torch.Tensor, *, block_size: int | None = None,
               max_context: int | None = None) -> torch.Tensor:
        """States ``s_j`` (B, U, D): ``s_j`` summarises ``inputs[:, :j + 1]`` (causal).

        Args:
            inputs: (B, U) token ids (positions 0 .. U-1).
            block_size: blockwise causal attention at inference (each query sees its own and the
                previous block of ``block_size`` tokens); None = every earlier token.
            max_context: each query also sees at most this many earlier positions, as a decoding
                cache bounded to ``max_context`` keeps them (:meth:`empty_caches`); None = no bound.
        """
        x = self.embed(inputs)
        n = inputs.shape[1]
        for i, layer in enumerate(self.layers):
            mask = self.layer_mask(i, n, inputs.device, block_size)
            if max_context is not None:
                pos = torch.arange(n, device=inputs.device)
                mask = mask & (pos[:, None] - pos[None, :] <= max_context)
            x = layer(x, mask)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, token_lens: torch.Tensor) -> Losses:
        """Next-token loss over ``[sos, y] -> [y, eos]``; tokens (B, U), token_lens (B,)."""
        inputs, targets = add_sos_eos(tokens, token_lens)
        logits = self.out(self.hidden(inputs))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return Losses(total=loss, lm=loss.detach())

    def stream_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of a plain token stream (B, T): predicts ``tokens[:, 1:]``."""
        logits = self.out(self.hidden(tokens[:, :-1]))
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    # ------------------------------------------------------------------ decoding
    def step(self, token: torch.Tensor, caches: list[LayerCache]) -> tuple[torch.Tensor, list[LayerCache]]:
        """One decoding step: token (N,) -> hidden (N, D) and the caches with it appended."""
        h, caches = self.extend(token[:, None], caches)
        return h[:, 0], caches

    def extend(self, tokens: torch.Tensor, caches: list[LayerCache]) -> tuple[torch.Tensor, list[LayerCache]]:
        """Feed ``t`` new tokens (N, t) after the cached ones: hidden (N, t, D) and the new caches."""
        x = self.embed(tokens)
        new = []
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            x, cache = self._layer_step(i, layer, x, cache)
            new.append(cache)
        return self.norm(x), new

    def _layer_step(self, i: int, layer: TransformerLayer, x: torch.Tensor,
                    cache: LayerCache) -> tuple[torch.Tensor, LayerCache]:
        t = x.shape[1]
        if isinstance(cache, KVCache) and self._window(i) is None:
            return layer.step(x, cache)  # the shipped path, unchanged
        q_pos = torch.arange(cache.end, cache.end + t, device=x.device)
        if isinstance(cache, PagedKVCache):
            k_pos = torch.cat([cache.pos, q_pos])
            attend: Callable = paged_self_attention
        else:
            k_pos = torch.arange(cache.start, cache.end + t, device=x.device)
            attend = lambda mha, h, c, mask: mha.forward_cached(h, c, mask=mask)  # noqa: E731
        h, cache = attend(layer.self_attn, layer.norm_self(x), cache, self.allowed(i, q_pos, k_pos))
        x = x + h
        return x + layer.ff(x), cache

    def empty_caches(self, batch_size: int, device: torch.device, beam: bool = False) -> list[KVCache]:
        """Empty bounded caches (``LMConfig.max_context``), one per layer; ``beam``: a
        :class:`~asr.attention.BeamKVCache` for a beam search's steps when there is no bound."""
        head_dim = self.cfg.d_model // self.cfg.n_heads
        kind = BeamKVCache if beam and self.cfg.max_context is None else KVCache
        return [kind.empty(batch_size, self.cfg.n_heads, head_dim, self.cfg.max_context, device, self.embed.weight.dtype)
                for _ in self.layers]

    def empty_paged_caches(self, batch_size: int, device: torch.device, cfg: PagedCacheConfig) -> list[PagedKVCache]:
        """Empty paged caches with PagedEviction, one per layer."""
        head_dim = self.cfg.d_model // self.cfg.n_heads
        return [PagedKVCache.empty(batch_size, self.cfg.n_heads, head_dim, cfg, device, self.embed.weight.dtype)
                for _ in self.layers]


@dataclass(frozen=True)
class LMState:
    """KV caches (one per layer, batched over hypotheses) covering each prefix but its last token."""

    caches: list[LayerCache]


class LMScorer:
    """Full scorer (see :mod:`asr.search.scorer`) for shallow fusion with a :class:`TransformerLM`."""

    def __init__(self, lm: TransformerLM):
        self.lm = lm

    def init_state(self, memory: Memory) -> LMState:
        return LMState(self.lm.empty_caches(1, self.lm.embed.weight.device, beam=True))

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor, states: LMState, memory: Memory) -> tuple[torch.Tensor, LMState]:
        h, caches = self.lm.step(prefixes[:, -1], states.caches)
        return self.lm.out(h).float().log_softmax(-1), LMState(caches)

    def select_state(self, states: LMState, index: torch.Tensor, token: torch.Tensor) -> LMState:
        return LMState([c.select(index) for c in states.caches])
