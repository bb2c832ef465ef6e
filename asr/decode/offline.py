"""Full-context decoding: the reference search over a whole segment encoded without a block mask,
and :class:`OfflineDecoder`, the block decoder that runs it at every endpoint of a stream."""

from __future__ import annotations

import torch

from asr.decode.base import BlockDecoder, Tokens
from asr.decode.bsbs import aligned_tokens, joint_scorers, session_lm
from asr.encoder.subsampling import RECEPTIVE_FIELD, STRIDE
from asr.models.lm import LMScorer, TransformerLM
from asr.search import BeamSearch, BeamSearchConfig, ctc_prefix_beam_search
from asr.search.scorer import Memory

__all__ = ["OfflineDecoder", "offline_decode"]


@torch.no_grad()
def offline_decode(model, feats: torch.Tensor, beam: int = 10, ctc_weight: float = 0.3,
                   length_bonus: float = 0.0, lm: TransformerLM | LMScorer | None = None,
                   lm_weight: float = 0.0) -> Tokens:
    """feats (T, F) raw fbank of one segment -> tokens with CTC-aligned spike frames.

    Joint CTC/attention beam search (CTC prefix beam search when the model has no attention
    decoder); ``lm`` with ``lm_weight > 0`` adds shallow fusion (attention-decoder models); an
    LM or a scorer (``SessionLM.scorer()``: the session's context).
    """
    if feats.shape[0] < RECEPTIVE_FIELD:
        return Tokens()
    enc, enc_lens = model.encode(feats[None], torch.tensor([feats.shape[0]], device=feats.device))
    enc = enc[0, : int(enc_lens[0])]
    logp = model.ctc_logp(enc)
    if model.decoder is None:
        if lm is not None and lm_weight:
            raise ValueError("LM shallow fusion needs a model with an attention decoder")
        nbest = ctc_prefix_beam_search(logp, beam, token_topk=beam)
        return aligned_tokens(nbest[0].tokens if nbest else [], logp)
    scorers, weights = joint_scorers(model, ctc_weight, lm, lm_weight, length_bonus)
    nbest = BeamSearch(scorers, weights, BeamSearchConfig(beam_size=beam, nbest=1))(Memory(enc=enc, ctc_logp=logp))
    return aligned_tokens(nbest[0].tokens if nbest else [], logp)


class OfflineDecoder(BlockDecoder):
    """:func:`offline_decode` of each segment's raw features; no partial results.

    The streaming blocks only count the segment's encoder frames (its endpoints come from the
    streaming CTC); at :meth:`finalize` the segment's frames ``0 .. n`` are re-encoded with full
    context from feature frames ``0 .. STRIDE * n + RECEPTIVE_FIELD - STRIDE``, and the features
    from ``STRIDE * n`` on start the next segment.

    ``session_context``: the LM fusion of each segment starts from up to this many tokens of the
    stream's earlier finals (as in :class:`~asr.decode.bsbs.BsbsDecoder`); None = each segment alone.
    """

    partials = False

    def __init__(self, model, beam: int = 10, ctc_weight: float = 0.3, length_bonus: float = 0.0,
                 lm: TransformerLM | None = None, lm_weight: float = 0.0, session_context: int | None = None):
        self.model = model
        self.search = dict(beam=beam, ctc_weight=ctc_weight, length_bonus=length_bonus, lm=lm, lm_weight=lm_weight)
        self.session = session_lm(lm, lm_weight, session_context)
        self.feats: list[torch.Tensor] = []  # (t, F) each, from the segment's first feature frame on
        self.frames = 0  # encoder frames of the segment so far

    def accept_features(self, feats: torch.Tensor) -> None:
        if feats.shape[0]:
            self.feats.append(feats)

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        self.frames += enc.shape[0]

    def partial(self) -> Tokens:
        return Tokens()

    def finalize(self) -> Tokens:
        if not self.feats:
            self.frames = 0
            return Tokens()
        feats = torch.cat(self.feats)
        n = self.frames
        search = self.search if self.session is None else {**self.search, "lm": self.session.scorer()}
        tokens = offline_decode(self.model, feats[: STRIDE * n + RECEPTIVE_FIELD - STRIDE], **search)
        if self.session is not None and tokens.ids:
            self.session.commit(tokens.ids)
        self.feats = [feats[STRIDE * n:]]
        self.frames = 0
        return tokens
