"""The one place that turns inference settings into a block decoder."""

from __future__ import annotations

from asr.decode.base import BlockDecoder
from asr.decode.bsbs import BsbsDecoder
from asr.decode.ctc import CtcGreedyDecoder
from asr.decode.offline import OfflineDecoder
from asr.decode.sar import SarGreedyDecoder
from asr.inference import InferenceConfig, check_session_context
from asr.models.lm import TransformerLM

__all__ = ["LM_DECODERS", "build_decoder"]

LM_DECODERS = ("bsbs", "offline")  # the decoders with shallow fusion


def build_decoder(model, cfg: InferenceConfig, lm: TransformerLM | None = None,
                  source: str = "this model") -> BlockDecoder:
    """The block decoder ``cfg.decoder`` names, for one stream of ``model`` (an ``AsrModel``).

    Args:
        lm: the LM fused with weight ``cfg.lm_weight`` (bsbs, offline), trained with the model's tokenizer.
        source: how errors name the model (its directory).

    ``cfg.session_context`` carries the stream's earlier finals into each segment: the LM fusion
    context (bsbs, offline) or the SAR label context; the decoder holds it (one decoder per stream).

    Raises:
        ValueError: the model lacks the decoder's head, or the LM or session-context settings do not fit.
    """
    check_session_context(cfg.decoder, cfg.session_context, has_lm=lm is not None)
    if cfg.lm_weight:
        if lm is None:
            raise ValueError("lm_weight is set but no LM was given (--lm DIR)")
        if cfg.decoder not in LM_DECODERS:
            raise ValueError(f"LM shallow fusion works with the {' and '.join(LM_DECODERS)} decoders, "
                             f"not {cfg.decoder!r}")
    if cfg.decoder == "ctc":
        return CtcGreedyDecoder(cfg.ctc_beam)
    if cfg.decoder == "sar":
        if model.sar is None:
            raise ValueError(f"{source}: this model has no SAR decoder; use --decoder ctc")
        return SarGreedyDecoder(model.sar, cfg.tentative_frames, context_tokens=cfg.session_context)
    fusion = dict(beam=cfg.beam, ctc_weight=cfg.ctc_weight, length_bonus=cfg.length_bonus, lm=lm,
                  lm_weight=cfg.lm_weight, session_context=cfg.session_context)
    if cfg.decoder == "bsbs":
        if model.decoder is None:
            raise ValueError(f"{source}: this model has no attention decoder; use --decoder ctc or sar")
        return BsbsDecoder(model, **fusion)
    return OfflineDecoder(model, **fusion)
