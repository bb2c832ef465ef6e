"""Model-level decoders fed block by block (CTC greedy, SAR greedy, BSBS) and the offline reference."""

from asr.decode.base import FRAME_SECONDS, BlockDecoder, Tokens, Word, words_from_tokens
from asr.decode.bsbs import BsbsDecoder, aligned_tokens, joint_scorers
from asr.decode.ctc import CtcGreedyDecoder
from asr.decode.offline import offline_decode
from asr.decode.sar import SarGreedyDecoder

__all__ = ["FRAME_SECONDS", "BlockDecoder", "BsbsDecoder", "CtcGreedyDecoder", "SarGreedyDecoder", "Tokens",
           "Word", "aligned_tokens", "joint_scorers", "offline_decode", "words_from_tokens"]
