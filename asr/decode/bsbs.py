"""Blockwise synchronous beam search on the model's attention decoder + CTC prefix scorer (+ LM)."""

from __future__ import annotations

from typing import Hashable, Sequence

import torch

from asr.decode.base import BlockDecoder, Tokens
from asr.models.decoder import DecoderScorer
from asr.models.lm import LMScorer, TransformerLM
from asr.models.lm_session import SessionContextConfig, SessionLM
from asr.search import BlockwiseBeamSearch, BsbsConfig, CTCPrefixScorer, ctc_forced_align
from asr.search.batched import batch_signature, extend_blocks, finalize_searches
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

    Streams of one model with the same settings (and an LM without session context, or none) share
    :meth:`accept_blocks` and :meth:`finalize_many` calls: their searches run in lockstep
    (:mod:`asr.search.batched`). A stream with session context has its own LM caches (paged, with
    eviction) and runs alone.
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
        signature = None if self.session is not None else batch_signature(self.search)
        self._key: Hashable = ("alone", id(self)) if signature is None else signature

    def _start_segment(self) -> None:
        if self.session is not None:
            self.scorers["lm"] = self.session.scorer()  # this segment starts from the committed finals
        self.search = BlockwiseBeamSearch(self.scorers, self.weights, self.search_cfg)
        self.ctc: list[torch.Tensor] = []
        self.best = Hypothesis(tokens=[], score=0.0)

    def batch_key(self) -> Hashable:
        return self._key

    @torch.no_grad()
    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        if enc.shape[0]:
            self.ctc.append(ctc_logp)
            self.best = self.search.extend_block(enc, ctc_logp)

    @staticmethod
    @torch.no_grad()
    def accept_blocks(decoders: Sequence["BsbsDecoder"], encs: Sequence[torch.Tensor],
                      ctc_logps: Sequence[torch.Tensor], ctc_labels: Sequence[list[int]] | None = None) -> None:
        """``accept_block`` of every stream; the block searches of streams with equal keys run in
        lockstep (one batched expansion per step for all of them)."""
        live = [i for i, e in enumerate(encs) if e.shape[0]]
        for group in _groups([decoders[i] for i in live], live):
            if len(group) == 1:
                decoders[group[0]].accept_block(encs[group[0]], ctc_logps[group[0]])
                continue
            bests = extend_blocks([decoders[i].search for i in group], [encs[i] for i in group],
                                  [ctc_logps[i] for i in group],
                                  None if ctc_labels is None else [ctc_labels[i] for i in group])
            for i, best in zip(group, bests):
                decoders[i].ctc.append(ctc_logps[i])
                decoders[i].best = best

    def end_of_stream(self) -> None:
        self.search.end_of_stream()  # the flush's blocks are searched once, in finalize

    def partial(self) -> Tokens:
        return Tokens(self.best.tokens, [0] * len(self.best.tokens))

    @torch.no_grad()
    def finalize(self) -> Tokens:
        return self._finish(self.search.finalize())

    @staticmethod
    @torch.no_grad()
    def finalize_many(decoders: Sequence["BsbsDecoder"]) -> list[Tokens]:
        """``finalize`` of every stream; the final searches of streams with equal keys run in lockstep."""
        out: list[Tokens | None] = [None] * len(decoders)
        for group in _groups(decoders, range(len(decoders))):
            nbests = ([decoders[group[0]].search.finalize()] if len(group) == 1
                      else finalize_searches([decoders[i].search for i in group]))
            for i, nbest in zip(group, nbests):
                out[i] = decoders[i]._finish(nbest)
        return out  # type: ignore[return-value]

    def _finish(self, nbest: list[Hypothesis]) -> Tokens:
        """The segment's tokens from its n-best; the next segment starts."""
        tokens = aligned_tokens(nbest[0].tokens, torch.cat(self.ctc)) if nbest else Tokens()
        if self.session is not None and tokens.ids:  # a silent segment adds nothing to the context
            self.session.commit(tokens.ids)
        self._start_segment()
        return tokens


def _groups(decoders: Sequence[BsbsDecoder], index: Sequence[int]) -> list[list[int]]:
    """``index`` (one entry per decoder) grouped by the decoders' batch keys, in order."""
    groups: dict[Hashable, list[int]] = {}
    for d, i in zip(decoders, index):
        groups.setdefault(d.batch_key(), []).append(i)
    return list(groups.values())
