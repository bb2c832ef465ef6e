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

from asr.attention import combine_with_padding, pad_flat, pad_rows, padding_mask
from asr.decode.base import BlockDecoder, Tokens
from asr.decode.greedy import greedy_spikes
from asr.models.sar import SARDecoder
from asr.tokenizer import BLANK, SOS_EOS

__all__ = ["SarGreedyDecoder", "fuse_windows", "fused_label_rows", "fused_labels", "label_states"]


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
        # the committed tokens, appended in place (a block adds its head: O(1) amortised, not a
        # copy of the segment); the tentative ones are replaced every block
        self.committed_ids: list[int] = []
        self.committed_frames: list[int] = []
        self.tentative = Tokens()
        self._partial: Tokens | None = Tokens()  # partial() until the tokens change (None: build it)
        self.carry_enc = None  # (g', D) encoder frames re-decoded with the next block
        # greedy state at the end of the committed frames: the last one's label and their count
        self.prev_label, self.num_frames = BLANK, 0

    def lm_states(self) -> torch.Tensor:
        """The LM states ``s_0 .. s_n`` (n + 1, Dl) the next block's fusion attends to."""
        return label_states(self.sar, [self.lm_inputs], self.sar.out.weight.device)[0][0]

    @staticmethod
    def _commit_many(decoders: Sequence["SarGreedyDecoder"], labels: np.ndarray, lens: np.ndarray,
                     final: bool) -> np.ndarray:
        """Greedy CTC over each window's fused labels (``labels`` (B, W): the argmax of its fused
        logit frames, on the host; row i valid up to ``lens[i]``), for all windows in one numpy
        pass: commit each head, keep the tokens of its last g frames tentative. Returns how many
        frames each decoder carries into its next window (the caller cuts them out)."""
        keeps = np.zeros_like(lens) if final else np.minimum([d.g for d in decoders], lens)
        cuts = lens - keeps
        spikes = greedy_spikes(labels, lens, [d.prev_label for d in decoders], [d.num_frames for d in decoders], cuts)
        tokens, frames = spikes.tokens, spikes.frames
        for d, a, m, b, last, cut in zip(decoders, spikes.bounds, spikes.mids, spikes.bounds[1:], spikes.last,
                                         cuts.tolist()):
            if m > a:  # committed tokens: the LM context grows
                head = tokens[a:m]
                d.lm_inputs += head
                d.committed_ids += head
                d.committed_frames += frames[a:m]
                d._partial = None
            if b > m or d.tentative.ids:
                tail = Tokens(tokens[m:b], frames[m:b])
                if tail != d.tentative:
                    d.tentative, d._partial = tail, None
            d.prev_label, d.num_frames = last, d.num_frames + cut
        return keeps

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
        live = [(d, e) for d, e in zip(decoders, encs) if e.shape[0]]
        if live:
            # each window is the decoder's carried tail, then its block: all of them in one cat
            pieces = [t for d, e in live for t in ((e,) if d.carry_enc is None else (d.carry_enc, e))]
            lens = [e.shape[0] + (0 if d.carry_enc is None else d.carry_enc.shape[0]) for d, e in live]
            SarGreedyDecoder._decode([d for d, _ in live], torch.cat(pieces), lens, final=False)

    @staticmethod
    def _decode(decoders: Sequence["SarGreedyDecoder"], windows: torch.Tensor, lens: list[int], final: bool) -> None:
        """Decode the windows that ``windows`` (sum W_i, D) holds one after another (W_i = ``lens``)
        and set each decoder's carry: its window's last frames, cut out for all in one gather (views
        of one small tensor, not of the pass's windows)."""
        labels = fused_label_rows(decoders[0].sar, windows, lens, [d.lm_inputs for d in decoders])
        keeps = SarGreedyDecoder._commit_many(decoders, labels, np.asarray(lens, dtype=np.int64), final)
        kept = np.flatnonzero(keeps)
        carries: list[torch.Tensor | None] = [None] * len(decoders)
        if kept.size:
            counts = keeps[kept]
            starts = (np.cumsum(lens) - keeps)[kept]  # window i's tail: its last keeps[i] frames
            index = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
            tails = windows.index_select(0, torch.from_numpy(index).to(windows.device)).split(counts.tolist())
            for i, tail in zip(kept.tolist(), tails):
                carries[i] = tail
        for d, carry in zip(decoders, carries):
            d.carry_enc = carry

    @staticmethod
    @torch.no_grad()
    def finalize_many(decoders: Sequence["SarGreedyDecoder"]) -> list[Tokens]:
        """``finalize`` for many streams of one SAR decoder: one LM and one fusion call over every carried tail."""
        carried = [d for d in decoders if d.carry_enc is not None]
        if carried:  # leaves no carry: finalize() does the rest
            SarGreedyDecoder._decode(carried, torch.cat([d.carry_enc for d in carried]),
                                     [d.carry_enc.shape[0] for d in carried], final=True)
        return [d.finalize() for d in decoders]

    def partial(self) -> Tokens:
        """The committed and tentative tokens: the same object until they change."""
        if self._partial is None:
            tail = self.tentative
            self._partial = Tokens(self.committed_ids + tail.ids, self.committed_frames + tail.frames)
        return self._partial

    @torch.no_grad()
    def finalize(self) -> Tokens:
        if self.carry_enc is not None:
            SarGreedyDecoder._decode([self], self.carry_enc, [self.carry_enc.shape[0]], final=True)
        tokens = Tokens(self.committed_ids, self.committed_frames)  # the lists are the segment's: no copy
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
    w_lens = [w.shape[0] for w in windows]
    logits = _fuse_padded(sar, torch.cat(list(windows)), w_lens, memory, [s.shape[0] for s in states])
    return [logits[i, :n] for i, n in enumerate(w_lens)]


def fused_labels(sar: SARDecoder, windows: torch.Tensor, lens: Sequence[int],
                 contexts: Sequence[list[int]]) -> list[list[int]]:
    """:func:`fused_label_rows` as one list of labels per window."""
    rows = fused_label_rows(sar, windows, lens, contexts).tolist()
    return [row[:n] for row, n in zip(rows, lens)]


def fused_label_rows(sar: SARDecoder, windows: torch.Tensor, lens: Sequence[int],
                     contexts: Sequence[list[int]]) -> np.ndarray:
    """The per-frame argmax of the fused logits of each window given its label context (token
    ids, ``<sos>`` first), on the host: one LM call, one fusion call and one device-to-host copy for
    all the streams. ``windows`` (sum W_i, D) holds the windows one after another (W_i = ``lens``).
    Returns (B, max W_i) int64 labels, row i valid up to ``lens[i]``."""
    memory, s_lens = label_states(sar, contexts, windows.device)
    logits = _fuse_padded(sar, windows, lens, memory, s_lens)
    return logits.argmax(-1).cpu().numpy()  # (B, W)


def _fuse_padded(sar: SARDecoder, windows: torch.Tensor, lens: Sequence[int], memory: torch.Tensor,
                 s_lens: list[int]) -> torch.Tensor:
    """Fused logits (B, W, V) of the windows (one after another in ``windows``, W_i = ``lens``)
    zero-padded to one length W, against LM states ``memory`` (B, S, Dl) of which the first
    ``s_lens[i]`` are real."""
    if len(lens) == 1:
        return sar.fuse(windows[None], None, memory[:, : s_lens[0]], None)
    device = windows.device
    x = pad_flat(windows, lens)  # (B, W, D)
    W, S = x.shape[1], memory.shape[1]
    self_mask = cross_mask = None
    if any(n != W for n in lens):
        valid = padding_mask(torch.from_numpy(np.asarray(lens)).to(device), W)  # (B, W)
        self_mask = combine_with_padding(None, valid, valid)  # (B, 1, W, W)
    if any(n != S for n in s_lens):
        cross_mask = padding_mask(torch.from_numpy(np.asarray(s_lens)).to(device), S)[:, None, None, :].expand(-1, 1, W, S)
    return sar.fuse(x, self_mask, memory, cross_mask)
