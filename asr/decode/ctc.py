"""Streaming CTC decoding: greedy per block (the labels of a block are final when it arrives), or,
with ``beam > 1``, greedy partials and a CTC prefix beam search over the segment for the final."""

from __future__ import annotations

from typing import Sequence

import torch

from asr.decode.base import BlockDecoder, Tokens
from asr.decode.greedy import greedy_spikes, label_rows
from asr.search.ctc import ctc_prefix_beam_search
from asr.tokenizer import BLANK

__all__ = ["CtcGreedyDecoder"]


class CtcGreedyDecoder(BlockDecoder):
    """Best-path CTC over the blocks of a segment; a label run crossing a block boundary is one token."""

    def __init__(self, beam: int = 1) -> None:
        self.beam = beam
        self._start_segment()

    def _start_segment(self) -> None:
        # greedy state: the last frame's label and the segment's frames so far
        self.prev_label, self.num_frames = BLANK, 0
        self.ids: list[int] = []  # the segment's tokens, appended in place (O(1) amortised per block)
        self.frames: list[int] = []
        self._partial: Tokens | None = Tokens()  # partial() until a token arrives (None: build it)
        self.logp: list[torch.Tensor] = []  # kept for the final prefix beam search (beam > 1)

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        self.accept_blocks([self], [enc], [ctc_logp])

    @staticmethod
    def accept_blocks(decoders: Sequence["CtcGreedyDecoder"], encs: Sequence[torch.Tensor],
                      ctc_logps: Sequence[torch.Tensor], ctc_labels: Sequence[list[int]] | None = None) -> None:
        """The greedy step of every stream on its labels (given by the caller: no device work here),
        in one numpy pass over all of them (:func:`~asr.decode.greedy.greedy_spikes`)."""
        if ctc_labels is None:
            ctc_labels = [logp.argmax(-1).tolist() for logp in ctc_logps]
        rows, lens = label_rows(ctc_labels)
        spikes = greedy_spikes(rows, lens, [d.prev_label for d in decoders], [d.num_frames for d in decoders])
        for d, a, b, last, n, logp in zip(decoders, spikes.bounds, spikes.bounds[1:], spikes.last, lens.tolist(),
                                          ctc_logps):
            if b > a:
                d.ids += spikes.tokens[a:b]
                d.frames += spikes.frames[a:b]
                d._partial = None
            d.prev_label, d.num_frames = last, d.num_frames + n
            if d.beam > 1:
                d.logp.append(logp)

    def batch_key(self) -> object:
        return "ctc"  # the greedy step is per stream; the recognizer batches the CTC log-probs

    def partial(self) -> Tokens:
        """The segment's tokens so far: the same object until a token arrives."""
        if self._partial is None:
            self._partial = Tokens(self.ids[:], self.frames[:])
        return self._partial

    def finalize(self) -> Tokens:
        tokens = Tokens(self.ids, self.frames)  # the lists are the segment's: no copy
        if self.beam > 1 and self.logp:
            from asr.decode.bsbs import aligned_tokens

            logp = torch.cat(self.logp)
            nbest = ctc_prefix_beam_search(logp, self.beam)
            tokens = aligned_tokens(nbest[0].tokens if nbest else [], logp)
        self._start_segment()
        return tokens
