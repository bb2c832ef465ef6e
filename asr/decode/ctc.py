"""Streaming CTC decoding: greedy per block (the labels of a block are final when it arrives)."""

from __future__ import annotations

import torch

from asr.decode.base import Tokens
from asr.search.ctc import CtcGreedyState, ctc_greedy_step

__all__ = ["CtcGreedyDecoder"]


class CtcGreedyDecoder:
    """Best-path CTC over the blocks of a segment; a label run crossing a block boundary is one token."""

    def __init__(self) -> None:
        self.state = CtcGreedyState()
        self.tokens = Tokens()

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        result, self.state = ctc_greedy_step(ctc_logp, self.state)
        self.tokens = self.tokens + Tokens(result.tokens, result.frames)

    def partial(self) -> Tokens:
        return self.tokens

    def finalize(self) -> Tokens:
        return self.tokens
