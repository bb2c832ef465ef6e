"""Semi-autoregressive (SAR) decoder: NAR inside a block, label context across blocks (docs/DESIGN.md).

Training is one parallel pass: an LM subnetwork over ``[sos, y_1 .. y_K]`` gives states
``s_0 .. s_K``; fusion layers whose queries are encoder frames attend within their block and, by
cross-attention, to ``s_0 .. s_{n_b}`` where ``n_b`` counts the tokens whose CTC-aligned spike
lies in an earlier block; CTC on the fused frame logits.

Deviation from docs/DESIGN.md, on purpose: the fusion self-attention sees its own block only (no left
blocks). The encoder frames already carry the left context, and a block-local fusion needs no
cache, so re-decoding the tentative frames of the previous block (boundary-aware greedy) is a
plain recomputation over a window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.attention import block_causal_mask, combine_with_padding, padding_mask
from asr.models.config import SARConfig
from asr.models.layers import TransformerLayer
from asr.models.lm import TransformerLM
from asr.models.losses import add_sos_eos

__all__ = ["SARDecoder", "context_counts"]


def context_counts(token_frames: torch.Tensor, token_lens: torch.Tensor, num_frames: int,
                   block_size: int | None) -> torch.Tensor:
    """``n`` (B, T): how many tokens frame t may see — those aligned to blocks before t's block.

    Args:
        token_frames: (B, K) spike frame of each token (padding ignored via ``token_lens``).
        token_lens: (B,). num_frames: T. block_size: C, or None (full context: no label context).

    Example: C = 2, spikes at frames [0, 3, 4] -> blocks [0, 1, 2];
    frames 0..5 (blocks 0,0,1,1,2,2) see n = [0, 0, 1, 1, 2, 2].
    """
    B, K = token_frames.shape
    dev = token_frames.device
    if block_size is None:
        return torch.zeros(B, num_frames, dtype=torch.long, device=dev)
    block_start = torch.arange(num_frames, device=dev) // block_size * block_size  # (T,)
    valid = torch.arange(K, device=dev)[None, :] < token_lens[:, None]  # (B, K)
    earlier = (token_frames[:, None, :] < block_start[None, :, None]) & valid[:, None, :]  # (B, T, K)
    return earlier.sum(-1)


class SARDecoder(nn.Module):
    """LM subnetwork + fusion layers + vocabulary projection.

    Args:
        vocab_size: V. enc_dim: encoder width D (the fusion width). cfg: :class:`SARConfig`.
    """

    def __init__(self, vocab_size: int, enc_dim: int, cfg: SARConfig):
        super().__init__()
        self.cfg = cfg
        self.lm = TransformerLM(vocab_size, cfg.lm)
        self.layers = nn.ModuleList(
            TransformerLayer(enc_dim, cfg.n_heads, cfg.ff_mult, cfg.dropout, cross=True,
                             memory_dim=cfg.lm.d_model, pos="none")
            for _ in range(cfg.fusion_layers))
        self.norm = nn.LayerNorm(enc_dim)
        self.out = nn.Linear(enc_dim, vocab_size)

    def fuse(self, enc: torch.Tensor, self_mask: torch.Tensor | None, lm_states: torch.Tensor,
             cross_mask: torch.Tensor | None) -> torch.Tensor:
        """enc (B, T, D), lm_states (B, S, Dl) -> fused logits (B, T, V)."""
        x = enc
        for layer in self.layers:
            x = layer(x, self_mask, lm_states, cross_mask)
        return self.out(self.norm(x))

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor, tokens: torch.Tensor, token_lens: torch.Tensor,
                token_frames: torch.Tensor, block_size: int | None) -> torch.Tensor:
        """Teacher-forced fused logits (B, T, V) with the frames-by-tokens mask.

        Args:
            token_frames: (B, K) CTC spike frame of each token (from forced alignment, no gradient).
        """
        inputs, _ = add_sos_eos(tokens, token_lens)
        states = self.lm.hidden(inputs)  # (B, K + 1, Dl): s_0 .. s_K
        T = enc.shape[1]
        counts = context_counts(token_frames, token_lens, T, block_size)  # (B, T)
        cross = torch.arange(states.shape[1], device=enc.device)[None, None, :] <= counts[..., None]
        valid = padding_mask(enc_lens, T)
        blocks = None if block_size is None else block_causal_mask(T, block_size, 0, device=enc.device)
        self_mask = combine_with_padding(blocks, valid, valid)
        return self.fuse(enc, self_mask, states, cross[:, None])

    def lm_loss(self, tokens: torch.Tensor, token_lens: torch.Tensor) -> torch.Tensor:
        """LM next-token loss summed over tokens, mean over utterances (the CTC loss scale)."""
        return self.lm(tokens, token_lens).total * (token_lens.sum() + len(token_lens)) / len(token_lens)

    def ctc_loss(self, logits: torch.Tensor, enc_lens: torch.Tensor, tokens: torch.Tensor,
                 token_lens: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1).transpose(0, 1)
        return F.ctc_loss(logp, tokens, enc_lens, token_lens, blank=0, reduction="sum",
                          zero_infinity=True) / tokens.shape[0]
