"""Streaming CTC decoding: greedy per block (the labels of a block are final when it arrives), or,
with ``beam > 1``, greedy partials and a CTC prefix beam search over the segment for the final."""

from __future__ import annotations

from typing import Sequence

import torch

from asr.decode.base import BlockDecoder, Tokens
from asr.search.ctc import CtcGreedyState, ctc_greedy_labels, ctc_prefix_beam_search

__all__ = ["CtcGreedyDecoder"]


class CtcGreedyDecoder(BlockDecoder):
    """Best-path CTC over the blocks of a segment; a label run crossing a block boundary is one token."""

    def __init__(self, beam: int = 1) -> None:
        self.beam = beam
        self._start_segment()

    def _start_segment(self) -> None:
        self.state = CtcGreedyState()
        self.tokens = Tokens()
        self.logp: list[torch.Tensor] = []  # kept for the final prefix beam search (beam > 1)

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        self._accept(ctc_logp, ctc_logp.argmax(-1).tolist())

    @staticmethod
    def accept_blocks(decoders: Sequence["CtcGreedyDecoder"], encs: Sequence[torch.Tensor],
                      ctc_logps: Sequence[torch.Tensor], ctc_labels: Sequence[list[int]] | None = None) -> None:
        """The greedy step of each stream on its labels (given by the caller: no device work here)."""
        if ctc_labels is None:
            ctc_labels = [logp.argmax(-1).tolist() for logp in ctc_logps]
        for decoder, logp, labels in zip(decoders, ctc_logps, ctc_labels):
            decoder._accept(logp, labels)

    def _accept(self, ctc_logp: torch.Tensor, labels: list[int]) -> None:
        result, self.state = ctc_greedy_labels(labels, self.state)
        self.tokens = self.tokens + Tokens(result.tokens, result.frames)
        if self.beam > 1:
            self.logp.append(ctc_logp)

    def batch_key(self) -> object:
        return "ctc"  # the greedy step is per stream; the recognizer batches the CTC log-probs

    def partial(self) -> Tokens:
        return self.tokens

    def finalize(self) -> Tokens:
        tokens = self.tokens
        if self.beam > 1 and self.logp:
            from asr.decode.bsbs import aligned_tokens

            logp = torch.cat(self.logp)
            nbest = ctc_prefix_beam_search(logp, self.beam)
            tokens = aligned_tokens(nbest[0].tokens if nbest else [], logp)
        self._start_segment()
        return tokens
