"""Transformer attention decoder (joint CTC/attention) and its scorers for beam searches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asr.attention import BeamKVCache, KVCache, causal_mask, padding_mask
from asr.models.config import DecoderConfig
from asr.models.layers import TransformerLayer
from asr.models.losses import add_sos_eos
from asr.search.scorer import Memory

__all__ = ["AttentionDecoder", "DecoderState", "DecoderScorer", "RecomputeDecoderScorer"]


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

    def logits(self, inputs: torch.Tensor, memory: torch.Tensor | None, memory_lens: torch.Tensor | None,
               memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """inputs (B, U) ids starting with sos; memory (B, S, Dm) -> (B, U, V) logits.

        ``memory_kv``: :meth:`project_memory` of the memory instead of ``memory`` (no ``memory_lens``).
        """
        x = self.embed(inputs)
        self_mask = causal_mask(inputs.shape[1], device=inputs.device)
        cross_mask = None if memory_lens is None else padding_mask(memory_lens, memory.shape[1])[:, None, None, :]
        for i, layer in enumerate(self.layers):
            x = layer(x, self_mask, memory, cross_mask, memory_kv=None if memory_kv is None else memory_kv[i])
        return self.out(self.norm(x))

    def project_memory(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's cross-attention keys and values, each (B, H, S, head_dim), of memory (B, S, Dm)."""
        return [layer.cross_attn.project_memory(memory) for layer in self.layers]

    def empty_caches(self, batch_size: int, device: torch.device, dtype: torch.dtype,
                     beam: bool = False) -> list[KVCache]:
        """One empty self-attention cache per layer, for :meth:`step` (``beam``: a
        :class:`~asr.attention.BeamKVCache`, for a beam search's steps)."""
        attn = self.layers[0].self_attn
        kind = BeamKVCache if beam else KVCache
        return [kind.empty(batch_size, attn.n_heads, attn.head_dim, None, device, dtype) for _ in self.layers]

    def step(self, inputs: torch.Tensor, caches: list[KVCache],
             memory_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[KVCache]]:
        """Logits of the next token after the prefixes, from cached positions plus new ones.

        Equals ``logits(prefixes, ...)[:, -1]`` of the whole prefixes, where ``caches`` hold the
        keys/values of their first positions (computed against the same memory).

        Args:
            inputs: (B, t) the ids at positions ``caches[0].end ..`` (t >= 1; all of them on the first call).
            caches: per layer, self-attention keys/values (B, H, caches[0].end, head_dim).
            memory_kv: :meth:`project_memory` of one memory shared by all rows, each (1, H, S, head_dim).
        Returns:
            (B, V) logits at the last position, and the caches extended by the t positions.
        """
        x = self.embed(inputs)  # (B, t, D)
        new = []
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            if i == len(self.layers) - 1 and x.shape[1] > 1:  # its outputs at earlier positions feed nothing
                cache, x = layer.extend_cache(x[:, :-1], cache), x[:, -1:]
            x, cache = layer.step(x, cache, memory_kv=memory_kv[i])
            new.append(cache)
        return self.out(self.norm(x[:, -1])), new

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


class _MemoryKV:
    """The memory's cross-attention keys and values, projected once for all hypotheses and
    extended over new frames only: they depend on the frames alone, and projecting the memory
    again for every hypothesis at every step was most of a blockwise search's time."""

    def __init__(self, decoder: AttentionDecoder):
        self.decoder = decoder
        self._enc: torch.Tensor | None = None  # (S, Dm) the frames whose keys/values are cached
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, (1, H, S, head_dim)

    def memory_kv(self, enc: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of ``enc`` (S, Dm) for every layer, (1, H, S, head_dim); the cached frames
        are reused when they are a prefix of ``enc`` (a streaming memory only grows)."""
        old = self._enc
        n = 0 if old is None else old.shape[0]
        reuse = (old is not None and enc.shape[0] >= n and old.dtype == enc.dtype and old.device == enc.device
                 and (enc is old or torch.equal(enc[:n], old)))
        if not reuse:
            self._enc, self._kv = enc, self.decoder.project_memory(enc[None])
        elif enc.shape[0] > n:
            new = self.decoder.project_memory(enc[None, n:])
            self._kv = [(torch.cat([k, k_new], dim=2), torch.cat([v, v_new], dim=2))
                        for (k, v), (k_new, v_new) in zip(self._kv, new)]
            self._enc = enc
        return self._kv


@dataclass(frozen=True)
class DecoderState:
    """The decoder's self-attention keys/values of N prefixes, valid for one memory.

    Args:
        caches: per layer, (N, H, U, head_dim) keys/values of the U prefix positions.
        enc: the memory frames (S, Dm) they were computed against (every position attends to
            all of them, so the caches are stale once the memory has grown).
    """

    caches: list[KVCache]
    enc: torch.Tensor


class DecoderScorer(_MemoryKV):
    """Full scorer over the attention decoder, incremental within a memory.

    The state of a prefix is its decoder keys/values (:class:`DecoderState`); a step runs only the
    new token against them. The encoder memory grows while streaming, and every decoder position
    attends to all of it, so a prefix's states change with each new block: a state computed against
    other frames than ``memory.enc`` is dropped and the whole prefix runs again (once per block;
    the steps after it in the block are incremental). Scores equal :class:`RecomputeDecoderScorer`
    (float rounding aside): every prefix is always scored against the current memory.
    """

    def init_state(self, memory: Memory) -> None:
        """None: nothing cached (the first :meth:`score` runs the whole prefix)."""
        return None

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor, states: DecoderState | None,
              memory: Memory) -> tuple[torch.Tensor, DecoderState]:
        enc = memory.enc
        kv = self.memory_kv(enc)
        prefixes = prefixes.to(enc.device)
        fresh = states is not None and states.enc is enc and states.caches[0].length == prefixes.shape[1] - 1
        if fresh:
            caches, inputs = states.caches, prefixes[:, -1:]
        else:
            caches, inputs = self._shared_start(prefixes, kv)
        logits, caches = self.decoder.step(inputs, caches, kv)
        return logits.float().log_softmax(-1), DecoderState(caches, enc)

    def _shared_start(self, prefixes: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]]
                      ) -> tuple[list[KVCache], torch.Tensor]:
        """Caches and inputs to run ``prefixes`` (N, U) whole against a new memory. The positions
        that every row shares run once, as one row, and only the rest run per row: the hypotheses of
        one beam mostly differ in their last few tokens, so a block's recomputation of a long segment
        costs about its length instead of N times it. Each position depends only on the tokens up to
        it, so the caches equal running every row whole."""
        n, u = prefixes.shape
        dtype = kv[0][0].dtype
        same = (prefixes == prefixes[:1]).all(0).long().cumprod(0)
        shared = min(int(same.sum()), u - 1)  # every row keeps at least one position to step
        if n == 1 or shared == 0:
            return self.decoder.empty_caches(n, prefixes.device, dtype, beam=True), prefixes
        _, caches = self.decoder.step(prefixes[:1, :shared], self.decoder.empty_caches(1, prefixes.device, dtype, beam=True), kv)
        rows = torch.zeros(n, dtype=torch.long)
        return [c.select(rows) for c in caches], prefixes[:, shared:]

    def select_state(self, states: DecoderState, index: torch.Tensor, token: torch.Tensor) -> DecoderState:
        return DecoderState([c.select(index) for c in states.caches], states.enc)


class RecomputeDecoderScorer(_MemoryKV):
    """Full scorer over the attention decoder that runs every prefix whole at every step (no
    per-hypothesis state): the reference that :class:`DecoderScorer` equals."""

    def init_state(self, memory: Memory) -> None:
        return None

    @torch.no_grad()
    def score(self, prefixes: torch.Tensor, states: None, memory: Memory) -> tuple[torch.Tensor, None]:
        n = prefixes.shape[0]
        kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.memory_kv(memory.enc)]
        logits = self.decoder.logits(prefixes.to(memory.enc.device), None, None, memory_kv=kv)[:, -1]
        return logits.float().log_softmax(-1), None

    def select_state(self, states: None, index: torch.Tensor, token: torch.Tensor) -> None:
        return None
