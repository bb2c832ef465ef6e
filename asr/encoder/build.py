"""The encoder that an :class:`~asr.encoder.config.EncoderConfig` names (``kind``)."""

from __future__ import annotations

from asr.encoder.config import EncoderConfig
from asr.encoder.conformer import ConformerEncoder
from asr.encoder.contextual import ContextualBlockEncoder

__all__ = ["build_encoder"]


def build_encoder(cfg: EncoderConfig) -> ConformerEncoder:
    """``cfg.kind`` -> its encoder: ``"conformer"`` or ``"contextual_block"`` (same interface)."""
    kinds = {"conformer": ConformerEncoder, "contextual_block": ContextualBlockEncoder}
    if cfg.kind not in kinds:
        raise ValueError(f"EncoderConfig.kind must be one of {sorted(kinds)}, got {cfg.kind!r}")
    return kinds[cfg.kind](cfg)
