"""Transformer language model on the shared attention core; also the SAR decoder's LM subnetwork."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asr.attention import KVCache, causal_mask
from asr.models.config import LMConfig
from asr.models.layers import TransformerLayer
from asr.models.losses import Losses, add_sos_eos
from asr.search.scorer import Memory

__all__ = ["TransformerLM", "LMScorer", "LMState"]


class TransformerLM(nn.Module):
    """Causal transformer LM: embedding -> rotary self-attention layers -> norm -> vocabulary."""

    def __init__(self, vocab_size: int, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.dropout) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, vocab_size)

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """States ``s_j`` (B, U, D): ``s_j`` summarises ``inputs[:, :j + 1]`` (causal)."""
        x = self.embed(inputs)
        mask = causal_mask(inputs.shape[1], device=inputs.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, token_lens: torch.Tensor) -> Losses:
        """Next-token loss over ``[sos, y] -> [y, eos]``; tokens (B, U), token_lens (B,)."""
        inputs, targets = add_sos_eos(tokens, token_lens)
        logits = self.out(self.hidden(inputs))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return Losses(total=loss, lm=loss.detach())

    def step(self, token: torch.Tensor, caches: list[KVCache]) -> tuple[torch.Tensor, list[KVCache]]:
        """One decoding step: token (N,) -> hidden (N, D) and the caches with it appended."""
        x = self.embed(token[:, None])
        new = []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer.step(x, cache)
            new.append(cache)
        return self.norm(x[:, 0]), new

    def empty_caches(self, batch_size: int, device: torch.device) -> list[KVCache]:
        head_dim = self.cfg.d_model // self.cfg.n_heads
        dtype = self.embed.weight.dtype
        return [KVCache.empty(batch_size, self.cfg.n_heads, head_dim, self.cfg.max_context, device, dtype)
                for _ in self.layers]


@dataclass(frozen=True)
class LMState:
    """KV caches (one per layer, batched over hypotheses) covering each prefix but its last token."""

    caches: list[KVCache]


class LMScorer:
    """Full scorer (see :mod:`asr.search.scorer`) for shallow fusion with a :class:`TransformerLM`."""

    def __init__(self, lm: TransformerLM):
        self.lm = lm

    def init_state(self, memory: Memory) -> LMState:
        return LMState(self.lm.empty_caches(1, self.lm.embed.weight.device))

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor, states: LMState, memory: Memory) -> tuple[torch.Tensor, LMState]:
        h, caches = self.lm.step(prefixes[:, -1], states.caches)
        return self.lm.out(h).float().log_softmax(-1), LMState(caches)

    def select_state(self, states: LMState, index: torch.Tensor, token: torch.Tensor) -> LMState:
        return LMState([c.select(index) for c in states.caches])
