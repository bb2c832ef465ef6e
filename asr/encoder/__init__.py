"""Blockwise conformer encoders with exact streaming: plain (``conformer``) and contextual block."""

from asr.encoder.config import BPTConfig, EncoderConfig
from asr.encoder.conformer import FRAME_MS, ConformerEncoder, EncoderState, block_size_from_ms
from asr.encoder.contextual import ContextualBlockEncoder, ContextualState
from asr.encoder.build import build_encoder
from asr.encoder.subsampling import Conv2dSubsampling, subsampled_length

__all__ = [
    "BPTConfig",
    "FRAME_MS",
    "ConformerEncoder",
    "ContextualBlockEncoder",
    "ContextualState",
    "Conv2dSubsampling",
    "EncoderConfig",
    "EncoderState",
    "block_size_from_ms",
    "build_encoder",
    "subsampled_length",
]
