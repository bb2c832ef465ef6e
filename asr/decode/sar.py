"""Semi-autoregressive streaming greedy decoding with the boundary-aware rule (docs/DESIGN.md).

For each block: the fusion decoder reads the block's encoder frames (plus the carried tail of the
previous block) and the LM states of the *committed* tokens; greedy CTC over those frames, with
the label of the last committed frame carried across the boundary so a spike split by it is not
emitted twice. Tokens whose spike lies in the last ``g`` frames of the window are tentative:
shown in partial results, not committed to the LM context; the next block re-decodes those
frames together with its own. ``g = 0`` is the naive baseline.

Session context (``context_tokens = N``): a segment's label context starts from the last ``N``
tokens of the stream's earlier finals instead of empty, as if they were committed in earlier
blocks of the segment: the LM subnetwork reads ``<sos> c_1 .. c_N`` and the fusion attends to
``s_0 .. s_N`` before the segment's own tokens. Memory stays bounded by ``N`` plus one segment.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from asr.attention import combine_with_padding, padding_mask
from asr.decode.base import BlockDecoder, Tokens
from asr.models.sar import SARDecoder
from asr.search.ctc import CtcGreedyState, ctc_greedy_step
from asr.tokenizer import SOS_EOS

__all__ = ["SarGreedyDecoder", "fuse_windows"]


class SarGreedyDecoder(BlockDecoder):
    """Args:
        sar: the model's :class:`SARDecoder`.
        tentative_frames: ``g``, frames at the end of each window whose tokens stay tentative.
        context_tokens: label context carried from the stream's earlier finals (see the module
            docstring); None or 0 = each segment starts from ``<sos>`` alone.
    """

    def __init__(self, sar: SARDecoder, tentative_frames: int = 2, context_tokens: int | None = None):
        if tentative_frames < 0:
            raise ValueError(f"tentative_frames must be >= 0, got {tentative_frames}")
        if context_tokens is not None and context_tokens < 0:
            raise ValueError(f"context_tokens must be >= 0 or None, got {context_tokens}")
        self.sar = sar
        self.g = tentative_frames
        self.context_tokens = context_tokens or 0
        self.history: list[int] = []  # the last context_tokens tokens of the earlier finals
        self._start_segment()

    def _start_segment(self) -> None:
        sar = self.sar
        device = sar.out.weight.device
        self.caches = sar.lm.empty_caches(1, device)
        if self.history:  # <sos> and the carried tokens in one pass: s_0 .. s_N
            h, self.caches = sar.lm.extend(torch.tensor([[SOS_EOS, *self.history]], device=device), self.caches)
            h = h[0]
        else:
            h, self.caches = sar.lm.step(torch.tensor([SOS_EOS], device=device), self.caches)
        self.lm_states = [h]  # s_0 .. s_n of the context and the committed tokens, (k, Dl) each
        self.committed = Tokens()
        self.tentative = Tokens()
        self.carry_enc = None  # (g', D) encoder frames re-decoded with the next block
        self.state = CtcGreedyState()  # greedy state at the end of the committed frames

    def _window(self, enc: torch.Tensor) -> torch.Tensor:
        """The frames to decode: the carried tentative tail of the previous block, then ``enc``."""
        return enc if self.carry_enc is None else torch.cat([self.carry_enc, enc])

    def _commit(self, window: torch.Tensor, logits: torch.Tensor, final: bool) -> None:
        """Greedy CTC over the window's fused logits (W, V): commit the head, keep the last g frames tentative."""
        keep = 0 if final else min(self.g, window.shape[0])
        cut = window.shape[0] - keep
        head, head_state = ctc_greedy_step(logits[:cut], self.state)
        tail, _ = ctc_greedy_step(logits[cut:], head_state)
        for tok in head.tokens:
            h, self.caches = self.sar.lm.step(torch.tensor([tok], device=window.device), self.caches)
            self.lm_states.append(h)
        self.committed = self.committed + Tokens(head.tokens, head.frames)
        self.tentative = Tokens(tail.tokens, tail.frames)
        self.state = head_state
        self.carry_enc = window[cut:] if keep else None

    def batch_key(self) -> object:
        return ("sar", id(self.sar))  # streams of one SAR decoder share its fusion call

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        self.accept_blocks([self], [enc], [ctc_logp])

    @staticmethod
    @torch.no_grad()
    def accept_blocks(decoders: Sequence["SarGreedyDecoder"], encs: Sequence[torch.Tensor],
                      ctc_logps: Sequence[torch.Tensor]) -> None:
        """``accept_block`` for many streams of one SAR decoder: one fusion call over every stream's
        window and LM context (padded, with masks); the LM steps of committed tokens stay per stream."""
        live = [(d, d._window(e)) for d, e in zip(decoders, encs) if e.shape[0]]
        if not live:
            return
        logits = fuse_windows(live[0][0].sar, [w for _, w in live], [torch.cat(d.lm_states) for d, _ in live])
        for (d, window), lg in zip(live, logits):
            d._commit(window, lg, final=False)

    @staticmethod
    @torch.no_grad()
    def finalize_many(decoders: Sequence["SarGreedyDecoder"]) -> list[Tokens]:
        """``finalize`` for many streams of one SAR decoder: one fusion call over every carried tail."""
        carried = [d for d in decoders if d.carry_enc is not None]
        if carried:
            logits = fuse_windows(carried[0].sar, [d.carry_enc for d in carried],
                                  [torch.cat(d.lm_states) for d in carried])
            for d, lg in zip(carried, logits):
                d._commit(d.carry_enc, lg, final=True)  # leaves no carry: finalize() does the rest
        return [d.finalize() for d in decoders]

    def partial(self) -> Tokens:
        return self.committed + self.tentative

    @torch.no_grad()
    def finalize(self) -> Tokens:
        if self.carry_enc is not None:
            window = self.carry_enc
            self._commit(window, fuse_windows(self.sar, [window], [torch.cat(self.lm_states)])[0], final=True)
        tokens = self.committed
        if self.context_tokens:
            self.history = (self.history + tokens.ids)[-self.context_tokens:]
        self._start_segment()
        return tokens


def fuse_windows(sar: SARDecoder, windows: Sequence[torch.Tensor],
                 states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The SAR fusion over several streams' windows at once.

    Args:
        windows: (W_i, D) encoder frames per stream. states: (S_i, Dl) LM states ``s_0 .. s_n`` per stream.
    Returns:
        fused logits (W_i, V) per stream. Windows and contexts of different lengths are padded;
        padded keys and LM states are masked, so each equals ``sar.fuse`` of that stream alone.
    """
    if len(windows) == 1:
        return [sar.fuse(windows[0][None], None, states[0][None], None)[0]]
    w_lens = torch.tensor([w.shape[0] for w in windows], device=windows[0].device)
    s_lens = torch.tensor([s.shape[0] for s in states], device=windows[0].device)
    x = pad_sequence(list(windows), batch_first=True)  # (B, W, D)
    memory = pad_sequence(list(states), batch_first=True)  # (B, S, Dl)
    W, S = x.shape[1], memory.shape[1]
    self_mask = cross_mask = None
    if bool((w_lens != W).any()):
        valid = padding_mask(w_lens, W)  # (B, W)
        self_mask = combine_with_padding(None, valid, valid)  # (B, 1, W, W)
    if bool((s_lens != S).any()):
        cross_mask = padding_mask(s_lens, S)[:, None, None, :].expand(-1, 1, W, S)  # (B, 1, W, S)
    logits = sar.fuse(x, self_mask, memory, cross_mask)  # (B, W, V)
    return [logits[i, : int(n)] for i, n in enumerate(w_lens)]
