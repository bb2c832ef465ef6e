"""Semi-autoregressive streaming greedy decoding with the boundary-aware rule (DESIGN.md).

For each block: the fusion decoder reads the block's encoder frames (plus the carried tail of the
previous block) and the LM states of the *committed* tokens; greedy CTC over those frames, with
the label of the last committed frame carried across the boundary so a spike split by it is not
emitted twice. Tokens whose spike lies in the last ``g`` frames of the window are tentative:
shown in partial results, not committed to the LM context; the next block re-decodes those
frames together with its own. ``g = 0`` is the naive baseline.
"""

from __future__ import annotations

import torch

from asr.decode.base import BlockDecoder, Tokens
from asr.models.sar import SARDecoder
from asr.search.ctc import CtcGreedyState, ctc_greedy_step
from asr.tokenizer import SOS_EOS

__all__ = ["SarGreedyDecoder"]


class SarGreedyDecoder(BlockDecoder):
    """Args:
        sar: the model's :class:`SARDecoder`.
        tentative_frames: ``g``, frames at the end of each window whose tokens stay tentative.
    """

    def __init__(self, sar: SARDecoder, tentative_frames: int = 2):
        if tentative_frames < 0:
            raise ValueError(f"tentative_frames must be >= 0, got {tentative_frames}")
        self.sar = sar
        self.g = tentative_frames
        self._start_segment()

    def _start_segment(self) -> None:
        sar = self.sar
        device = sar.out.weight.device
        self.caches = sar.lm.empty_caches(1, device)
        h, self.caches = sar.lm.step(torch.tensor([SOS_EOS], device=device), self.caches)
        self.lm_states = [h]  # s_0 .. s_n of the committed tokens, each (1, Dl)
        self.committed = Tokens()
        self.tentative = Tokens()
        self.carry_enc = None  # (g', D) encoder frames re-decoded with the next block
        self.state = CtcGreedyState()  # greedy state at the end of the committed frames
        self.frames_done = 0  # frames before the carried tail

    @torch.no_grad()
    def _decode_window(self, enc: torch.Tensor, final: bool) -> None:
        window = enc if self.carry_enc is None else torch.cat([self.carry_enc, enc])
        states = torch.cat(self.lm_states)[None]  # (1, n + 1, Dl)
        logits = self.sar.fuse(window[None], None, states, None)[0]  # (W, V)
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

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        if enc.shape[0]:
            self._decode_window(enc, final=False)

    def partial(self) -> Tokens:
        return self.committed + self.tentative

    def finalize(self) -> Tokens:
        if self.carry_enc is not None:
            self._decode_window(self.carry_enc[:0], final=True)
        tokens = self.committed
        self._start_segment()
        return tokens
