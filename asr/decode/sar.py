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

import numpy as np
import torch

from asr.attention import combine_with_padding, pad_rows, padding_mask
from asr.decode.base import BlockDecoder, Tokens
from asr.models.sar import SARDecoder
from asr.search.ctc import CtcGreedyState, ctc_greedy_labels
from asr.tokenizer import SOS_EOS

__all__ = ["SarGreedyDecoder", "fuse_windows", "fused_labels", "label_states"]


class SarGreedyDecoder(BlockDecoder):
    """Args:
        sar: the model's :class:`SARDecoder`.
        tentative_frames: ``g``, frames at the end of each window whose tokens stay tentative.
        context_tokens: label context carried from the stream's earlier finals (see the module
            docstring); None or 0 = each segment starts from ``<sos>`` alone.

    The decoder keeps its label context as token ids (``lm_inputs``: ``<sos>``, the carried tokens,
    the committed ones). Each block's LM states ``s_0 .. s_n`` are the LM subnetwork over them, as
    in training (one causal pass, :func:`label_states`): for many streams that is one padded LM call
    per block, where a per-stream KV cache costs an LM step per committed token and stream.
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
        self.lm_inputs = [SOS_EOS, *self.history]  # what the LM reads: s_0 .. s_N, then one per committed token
        self.committed = Tokens()
        self.tentative = Tokens()
        self.carry_enc = None  # (g', D) encoder frames re-decoded with the next block
        self.state = CtcGreedyState()  # greedy state at the end of the committed frames

    def lm_states(self) -> torch.Tensor:
        """The LM states ``s_0 .. s_n`` (n + 1, Dl) the next block's fusion attends to."""
        return label_states(self.sar, [self.lm_inputs], self.sar.out.weight.device)[0][0]

    def _window(self, enc: torch.Tensor) -> torch.Tensor:
        """The frames to decode: the carried tentative tail of the previous block, then ``enc``."""
        return enc if self.carry_enc is None else torch.cat([self.carry_enc, enc])

    def _commit(self, window: torch.Tensor, labels: list[int], final: bool) -> None:
        """Greedy CTC over the window's fused labels (the argmax of its W fused logit frames, on the
        host): commit the head, keep the last g frames tentative."""
        keep = 0 if final else min(self.g, window.shape[0])
        cut = window.shape[0] - keep
        head, head_state = ctc_greedy_labels(labels[:cut], self.state)
        tail, _ = ctc_greedy_labels(labels[cut:], head_state)
        self.lm_inputs = self.lm_inputs + head.tokens
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
                      ctc_logps: Sequence[torch.Tensor], ctc_labels: Sequence[list[int]] | None = None) -> None:
        """``accept_block`` for many streams of one SAR decoder: one LM call over every stream's
        label context, one fusion call over every window (both padded, with masks) and one host copy
        of the labels. (The CTC labels are not used: SAR decodes its fused logits.)"""
        live = [(d, d._window(e)) for d, e in zip(decoders, encs) if e.shape[0]]
        if live:
            SarGreedyDecoder._decode(live, final=False)

    @staticmethod
    def _decode(live: Sequence[tuple["SarGreedyDecoder", torch.Tensor]], final: bool) -> None:
        labels = fused_labels(live[0][0].sar, [w for _, w in live], [d.lm_inputs for d, _ in live])
        for (d, window), lab in zip(live, labels):
            d._commit(window, lab, final=final)

    @staticmethod
    @torch.no_grad()
    def finalize_many(decoders: Sequence["SarGreedyDecoder"]) -> list[Tokens]:
        """``finalize`` for many streams of one SAR decoder: one LM and one fusion call over every carried tail."""
        carried = [(d, d.carry_enc) for d in decoders if d.carry_enc is not None]
        if carried:
            SarGreedyDecoder._decode(carried, final=True)  # leaves no carry: finalize() does the rest
        return [d.finalize() for d in decoders]

    def partial(self) -> Tokens:
        return self.committed + self.tentative

    @torch.no_grad()
    def finalize(self) -> Tokens:
        if self.carry_enc is not None:
            SarGreedyDecoder._decode([(self, self.carry_enc)], final=True)
        tokens = self.committed
        if self.context_tokens:
            self.history = (self.history + tokens.ids)[-self.context_tokens:]
        self._start_segment()
        return tokens


def label_states(sar: SARDecoder, contexts: Sequence[list[int]],
                 device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """The LM subnetwork's states over each stream's label context (token ids, ``<sos>`` first):
    (B, S, Dl) padded at the end, and the lengths. One causal pass, as in training; the pads come
    after every real token, so the causal mask keeps them out of the real states. With
    ``max_context`` each position sees at most that many earlier ones (a bounded decoding cache)."""
    lens = [len(c) for c in contexts]
    width = max(lens)
    ids = np.array([c + [SOS_EOS] * (width - len(c)) for c in contexts], dtype=np.int64)  # (not torch.tensor: slow on lists)
    ids = torch.from_numpy(ids).to(device)
    return sar.lm.hidden(ids, max_context=sar.lm.cfg.max_context), lens


def fuse_windows(sar: SARDecoder, windows: Sequence[torch.Tensor],
                 states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The SAR fusion over several streams' windows at once.

    Args:
        windows: (W_i, D) encoder frames per stream. states: (S_i, Dl) LM states ``s_0 .. s_n`` per stream.
    Returns:
        fused logits (W_i, V) per stream. Windows and contexts of different lengths are padded;
        padded keys and LM states are masked, so each equals ``sar.fuse`` of that stream alone.
    """
    memory = pad_rows(states)  # (B, S, Dl)
    logits, w_lens = _fuse_padded(sar, windows, memory, [s.shape[0] for s in states])
    return [logits[i, :n] for i, n in enumerate(w_lens)]


def fused_labels(sar: SARDecoder, windows: Sequence[torch.Tensor], contexts: Sequence[list[int]]) -> list[list[int]]:
    """The per-frame argmax of the fused logits of each window (W_i, D) given its label context
    (token ids, ``<sos>`` first), on the host: one LM call, one fusion call and one device-to-host
    copy for all the streams."""
    memory, s_lens = label_states(sar, contexts, windows[0].device)
    logits, w_lens = _fuse_padded(sar, windows, memory, s_lens)
    rows = logits.argmax(-1).tolist()  # (B, W)
    return [row[:n] for row, n in zip(rows, w_lens)]


def _fuse_padded(sar: SARDecoder, windows: Sequence[torch.Tensor], memory: torch.Tensor,
                 s_lens: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Fused logits (B, W, V) of the windows zero-padded to one length W, against LM states
    ``memory`` (B, S, Dl) of which the first ``s_lens[i]`` are real; and the window lengths."""
    lens = [w.shape[0] for w in windows]
    if len(windows) == 1:
        return sar.fuse(windows[0][None], None, memory[:, : s_lens[0]], None), lens
    device = windows[0].device
    x = pad_rows(windows)  # (B, W, D)
    W, S = x.shape[1], memory.shape[1]
    self_mask = cross_mask = None
    if any(n != W for n in lens):
        valid = padding_mask(torch.tensor(lens, device=device), W)  # (B, W)
        self_mask = combine_with_padding(None, valid, valid)  # (B, 1, W, W)
    if any(n != S for n in s_lens):
        cross_mask = padding_mask(torch.tensor(s_lens, device=device), S)[:, None, None, :].expand(-1, 1, W, S)
    return sar.fuse(x, self_mask, memory, cross_mask), lens
