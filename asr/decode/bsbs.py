"""Blockwise synchronous beam search on the model's attention decoder + CTC prefix scorer (+ LM)."""

from __future__ import annotations

import torch

from asr.decode.base import BlockDecoder, Tokens
from asr.models.decoder import DecoderScorer
from asr.models.lm import LMScorer, TransformerLM
from asr.models.lm_session import SessionContextConfig, SessionLM
from asr.search import BlockwiseBeamSearch, BsbsConfig, CTCPrefixScorer, ctc_forced_align
from asr.search.scorer import LENGTH_BONUS, Hypothesis

__all__ = ["BsbsDecoder", "joint_scorers", "aligned_tokens", "session_lm"]


def joint_scorers(model, ctc_weight: float, lm: TransformerLM | LMScorer | None = None, lm_weight: float = 0.0,
                  length_bonus: float = 0.0) -> tuple[dict, dict]:
    """The scorers and weights of joint CTC/attention search (``decoder: 1 - ctc_weight``).

    ``lm`` is an LM or a ready scorer (``SessionLM.scorer()`` carries a session's context).
    """
    if model.decoder is None:
        raise ValueError("this model has no attention decoder: use --decoder ctc or sar")
    scorers = {"decoder": DecoderScorer(model.decoder), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 1.0 - ctc_weight, "ctc": ctc_weight, LENGTH_BONUS: length_bonus}
    if lm is not None and lm_weight:
        scorers["lm"], weights["lm"] = (lm if isinstance(lm, LMScorer) else LMScorer(lm)), lm_weight
    return scorers, weights


def aligned_tokens(ids: list[int], ctc_logp: torch.Tensor) -> Tokens:
    """Spike frames of ``ids`` by CTC forced alignment (evenly spread when they cannot align)."""
    if not ids:
        return Tokens()
    T = ctc_logp.shape[0]
    need = len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))
    if need <= T:
        frames = ctc_forced_align(ctc_logp, ids).token_frames.tolist()
    else:
        frames = [min(T - 1, k * T // len(ids)) for k in range(len(ids))]
    return Tokens(list(ids), frames)


def session_lm(lm: TransformerLM | None, lm_weight: float, session_context: int | None) -> SessionLM | None:
    """The stream's :class:`SessionLM` for ``--session-context N`` (None when there is no fusion LM
    or no context: each segment is then scored alone, as before)."""
    if lm is None or not lm_weight or not session_context:
        return None
    return SessionLM(lm, SessionContextConfig.for_tokens(session_context))


class BsbsDecoder(BlockDecoder):
    """Streaming joint decoding with :class:`BlockwiseBeamSearch`; partials are the best hypothesis.

    ``session_context``: the LM fusion of each segment starts from up to this many tokens of the
    stream's earlier finals (:class:`~asr.models.lm_session.SessionLM`, committed at
    :meth:`finalize`); None = each segment alone.
    """

    def __init__(self, model, beam: int = 10, ctc_weight: float = 0.3, length_bonus: float = 0.0,
                 lm: TransformerLM | None = None, lm_weight: float = 0.0, repetition_test: bool = True,
                 backoff: bool = True, ctc_trigger: bool = True,
                 session_context: int | None = None):
        self.session = session_lm(lm, lm_weight, session_context)
        self.scorers, self.weights = joint_scorers(model, ctc_weight, lm, lm_weight, length_bonus)
        self.search_cfg = BsbsConfig(beam_size=beam, nbest=1, repetition_test=repetition_test, backoff=backoff,
                                     ctc_trigger=ctc_trigger)
        self._start_segment()

    def _start_segment(self) -> None:
        if self.session is not None:
            self.scorers["lm"] = self.session.scorer()  # this segment starts from the committed finals
        self.search = BlockwiseBeamSearch(self.scorers, self.weights, self.search_cfg)
        self.ctc: list[torch.Tensor] = []
        self.best = Hypothesis(tokens=[], score=0.0)

    @torch.no_grad()
    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        if enc.shape[0]:
            self.ctc.append(ctc_logp)
            self.best = self.search.extend_block(enc, ctc_logp)

    def partial(self) -> Tokens:
        return Tokens(self.best.tokens, [0] * len(self.best.tokens))

    @torch.no_grad()
    def finalize(self) -> Tokens:
        nbest = self.search.finalize()
        tokens = aligned_tokens(nbest[0].tokens, torch.cat(self.ctc)) if nbest else Tokens()
        if self.session is not None and tokens.ids:  # a silent segment adds nothing to the context
            self.session.commit(tokens.ids)
        self._start_segment()
        return tokens
