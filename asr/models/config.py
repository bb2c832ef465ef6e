"""Model configuration: one frozen dataclass per component, nested into :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asr.attention.sparse import LongGenConfig
from asr.encoder import EncoderConfig

__all__ = ["DecoderConfig", "LMConfig", "SARConfig", "ModelConfig"]


@dataclass(frozen=True)
class DecoderConfig:
    """Transformer attention decoder (rotary self-attention, cross-attention to the encoder)."""

    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 3
    ff_mult: int = 4
    dropout: float = 0.1
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class LMConfig:
    """Causal transformer language model on the shared attention core.

    ``pos``: ``rope`` (rotary), ``xpos`` (rotary with decay, length-extrapolating; decay length
    ``xpos_scale_base``) or ``none``. ``longgen``: LongGen sparse layers (None = all full).
    """

    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.1
    max_context: int | None = None  # KV cache bound when decoding (None = unbounded)
    pos: Literal["rope", "xpos", "none"] = "rope"
    xpos_scale_base: float = 512.0
    longgen: LongGenConfig | None = None


@dataclass(frozen=True)
class SARConfig:
    """Semi-autoregressive decoder (docs/DESIGN.md): LM subnetwork + fusion layers over encoder frames.

    Attributes:
        lm: the LM subnetwork (can be initialised from a text-only :class:`TransformerLM`).
        fusion_layers: layers whose queries are encoder frames; self-attention within the block,
            cross-attention to the LM states of the tokens aligned to earlier blocks.
        lm_loss_weight: weight of the LM next-token loss.
    """

    lm: LMConfig = field(default_factory=LMConfig)
    fusion_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    lm_loss_weight: float = 0.3


@dataclass(frozen=True)
class ModelConfig:
    """An encoder with a CTC head and, optionally, an attention decoder and a SAR decoder.

    ``kind`` documents the training recipe: ``ctc`` (CTC only), ``joint`` (CTC + attention decoder),
    ``sar`` (SAR decoder + auxiliary CTC, optionally + attention decoder). The heads present are
    exactly those whose config is not null.

    Attributes:
        ctc_weight: weight of the encoder CTC loss (the other losses share ``1 - ctc_weight``).
    """

    vocab_size: int
    kind: str = "ctc"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig | None = None
    sar: SARConfig | None = None
    ctc_weight: float = 0.3

    def __post_init__(self) -> None:
        heads = {"ctc": (False, False), "joint": (True, False), "sar": (None, True)}
        if self.kind not in heads:
            raise ValueError(f"ModelConfig.kind must be one of {sorted(heads)}, got {self.kind!r}")
        want_dec, want_sar = heads[self.kind]
        if want_dec is not None and (self.decoder is not None) != want_dec:
            raise ValueError(f"ModelConfig: kind {self.kind!r} {'needs' if want_dec else 'takes no'} decoder")
        if (self.sar is not None) != want_sar:
            raise ValueError(f"ModelConfig: kind {self.kind!r} {'needs' if want_sar else 'takes no'} sar")
