"""Model-level decoders fed block by block (CTC greedy, SAR greedy, BSBS, offline), the one builder
that picks them from the inference settings, and the full-context reference search."""

from asr.decode.base import BlockDecoder, Tokens, Word, words_from_tokens
from asr.decode.bsbs import BsbsDecoder, aligned_tokens, joint_scorers
from asr.decode.build import LM_DECODERS, build_decoder
from asr.decode.ctc import CtcGreedyDecoder
from asr.decode.offline import OfflineDecoder, offline_decode
from asr.decode.sar import SarGreedyDecoder, fuse_windows

__all__ = ["LM_DECODERS", "BlockDecoder", "BsbsDecoder", "CtcGreedyDecoder", "OfflineDecoder", "SarGreedyDecoder",
           "Tokens", "Word", "aligned_tokens", "build_decoder", "fuse_windows", "joint_scorers", "offline_decode",
           "words_from_tokens"]
