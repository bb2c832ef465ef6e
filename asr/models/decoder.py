"""Transformer attention decoder (joint CTC/attention) and its scorer for beam searches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.attention import causal_mask, padding_mask
from asr.models.config import DecoderConfig
from asr.models.layers import TransformerLayer
from asr.models.losses import add_sos_eos
from asr.search.scorer import Memory

__all__ = ["AttentionDecoder", "DecoderScorer"]


class AttentionDecoder(nn.Module):
    """Embedding -> layers (rotary causal self-attention, cross-attention to encoder frames) -> vocabulary."""

    def __init__(self, vocab_size: int, memory_dim: int, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.dropout, cross=True, memory_dim=memory_dim)
            for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, vocab_size)

    def logits(self, inputs: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor | None) -> torch.Tensor:
        """inputs (B, U) ids starting with sos; memory (B, S, Dm) -> (B, U, V) logits."""
        x = self.embed(inputs)
        self_mask = causal_mask(inputs.shape[1], device=inputs.device)
        cross_mask = None if memory_lens is None else padding_mask(memory_lens, memory.shape[1])[:, None, None, :]
        for layer in self.layers:
            x = layer(x, self_mask, memory, cross_mask)
        return self.out(self.norm(x))

    def forward(self, memory: torch.Tensor, memory_lens: torch.Tensor, tokens: torch.Tensor,
                token_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label-smoothed teacher-forced loss (summed over tokens, mean over utterances, the scale
        of the CTC loss) and token accuracy."""
        inputs, targets = add_sos_eos(tokens, token_lens)
        logits = self.logits(inputs, memory, memory_lens).float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                               label_smoothing=self.cfg.label_smoothing, reduction="sum") / tokens.shape[0]
        valid = targets != -100
        acc = (logits.argmax(-1) == targets)[valid].float().mean()
        return loss, acc


class DecoderScorer:
    """Full scorer over the attention decoder.

    The encoder memory grows while streaming, and every decoder position attends to all of it, so
    a prefix's decoder states change with each new block: the scorer recomputes the (short)
    prefixes against the current memory instead of caching states. It is stateless.
    """

    def __init__(self, decoder: AttentionDecoder):
        self.decoder = decoder

    def init_state(self, memory: Memory) -> None:
        return None

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor, states: None, memory: Memory) -> tuple[torch.Tensor, None]:
        enc = memory.enc[None].expand(prefixes.shape[0], -1, -1)
        logits = self.decoder.logits(prefixes.to(enc.device), enc, None)[:, -1]
        return logits.float().log_softmax(-1), None

    def select_state(self, states: None, index: torch.Tensor, token: torch.Tensor) -> None:
        return None
