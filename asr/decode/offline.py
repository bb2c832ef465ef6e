"""Full-context references: joint CTC/attention beam search (or CTC prefix beam search when the
model has no attention decoder) over a whole segment encoded without a block mask."""

from __future__ import annotations

import torch

from asr.decode.base import Tokens
from asr.decode.bsbs import aligned_tokens, joint_scorers
from asr.models.lm import TransformerLM
from asr.search import BeamSearch, BeamSearchConfig, ctc_prefix_beam_search
from asr.search.scorer import Memory

__all__ = ["offline_decode"]


@torch.no_grad()
def offline_decode(model, feats: torch.Tensor, beam: int = 10, ctc_weight: float = 0.3,
                   length_bonus: float = 0.0, lm: TransformerLM | None = None, lm_weight: float = 0.0) -> Tokens:
    """feats (T, 80) raw fbank of one segment -> tokens with CTC-aligned spike frames.

    ``lm`` with ``lm_weight > 0`` adds shallow fusion to the joint search (attention-decoder models).
    """
    if feats.shape[0] < 7:
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
    nbest = BeamSearch(scorers, weights, BeamSearchConfig(beam_size=beam))(Memory(enc=enc, ctc_logp=logp))
    return aligned_tokens(nbest[0].tokens if nbest else [], logp)
