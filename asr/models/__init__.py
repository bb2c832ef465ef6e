"""Models: the ASR model with CTC / attention / SAR heads, the transformer LM, their configs."""

from asr.models.config import DecoderConfig, LMConfig, ModelConfig, SARConfig
from asr.models.decoder import AttentionDecoder, DecoderScorer
from asr.models.lm import LMScorer, TransformerLM
from asr.models.losses import Losses
from asr.models.model import AsrModel, build_model
from asr.models.sar import SARDecoder, context_counts

__all__ = [
    "AsrModel", "AttentionDecoder", "DecoderConfig", "DecoderScorer", "LMConfig", "LMScorer", "Losses",
    "ModelConfig", "SARConfig", "SARDecoder", "TransformerLM", "build_model", "context_counts",
]
