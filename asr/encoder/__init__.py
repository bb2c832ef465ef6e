"""Blockwise conformer encoder with exact streaming."""

from asr.encoder.config import BPTConfig, EncoderConfig
from asr.encoder.conformer import FRAME_MS, ConformerEncoder, EncoderState, block_size_from_ms
from asr.encoder.subsampling import Conv2dSubsampling, subsampled_length

__all__ = [
    "BPTConfig",
    "FRAME_MS",
    "ConformerEncoder",
    "Conv2dSubsampling",
    "EncoderConfig",
    "EncoderState",
    "block_size_from_ms",
    "subsampled_length",
]
