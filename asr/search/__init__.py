"""Search over token scores: CTC decoding, the scorer interface, joint beam search and blockwise
synchronous beam search. Everything works in natural-log probabilities on single utterances."""

from asr.search.beam_search import BeamSearch, BeamSearchConfig, SearchStep, rescore
from asr.search.bsbs import BlockwiseBeamSearch, BsbsConfig
from asr.search.ctc import (CtcAlignment, CtcGreedyResult, CtcGreedyState, ctc_forced_align,
                            ctc_forced_align_batch, ctc_greedy, ctc_greedy_labels, ctc_greedy_step,
                            ctc_prefix_beam_search)
from asr.search.ctc_prefix_score import CTCPrefixScorer, CtcPrefixCandidates, CtcPrefixState
from asr.search.scorer import (BLANK, LENGTH_BONUS, SOS_EOS, Beam, Hypothesis, Memory,
                               PartialScorer, Scorer)

__all__ = [
    "BLANK",
    "SOS_EOS",
    "LENGTH_BONUS",
    "Memory",
    "Scorer",
    "PartialScorer",
    "Hypothesis",
    "Beam",
    "CtcGreedyResult",
    "CtcGreedyState",
    "ctc_greedy",
    "ctc_greedy_step",
    "ctc_greedy_labels",
    "ctc_prefix_beam_search",
    "CtcAlignment",
    "ctc_forced_align",
    "ctc_forced_align_batch",
    "CTCPrefixScorer",
    "CtcPrefixState",
    "CtcPrefixCandidates",
    "BeamSearchConfig",
    "BeamSearch",
    "SearchStep",
    "rescore",
    "BsbsConfig",
    "BlockwiseBeamSearch",
]
