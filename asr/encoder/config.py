"""Configuration of the blockwise conformer encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BPTConfig", "EncoderConfig"]


@dataclass(frozen=True)
class BPTConfig:
    """Blockwise Parallel Transformer in ``ConformerEncoder.forward`` (long utterances).

    Attention is computed in ``query_block`` x ``key_block`` tiles with an online softmax and a
    backward that recomputes each tile; the feed-forward modules, the convolution modules and
    the subsampling run ``frame_block`` encoder frames at a time under recomputation. No T x T
    scores, no T x (ff_mult * D) feed-forward activation and no full-resolution subsampling
    activation is kept, so training memory grows slowly and linearly with the utterance. Same
    numbers as the plain path; costs one recomputation of the attention scores and of those
    modules in the backward pass.

    Attributes:
        query_block, key_block: attention tile in encoder frames (40 ms each); a tile holds
            B x H x query_block x key_block scores (16 MiB per utterance at 4 heads, float32).
            Larger tiles mean fewer, larger kernels (faster on a GPU), smaller ones less memory.
        frame_block: encoder frames per block of the feed-forward, convolution and subsampling.
            The subsampling's recomputed block is the widest activation left (about 100 x D
            floats per encoder frame), hence smaller than the attention tiles.
    """

    query_block: int = 1024
    key_block: int = 1024
    frame_block: int = 256

    def __post_init__(self) -> None:
        for name in ("query_block", "key_block", "frame_block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BPTConfig: {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """Conformer encoder hyper-parameters.

    Attributes:
        kind: ``"conformer"`` (:class:`~asr.encoder.conformer.ConformerEncoder`, block-causal
            attention with a left-context KV cache) or ``"contextual_block"``
            (:class:`~asr.encoder.contextual.ContextualBlockEncoder`: the same layers plus one
            context embedding per block handed to the next block, Tsunoo et al. 2019). The
            contextual encoder takes ``pos`` ``"rel"`` or ``"none"``, ``kernel`` ``"sdpa"`` and no ``bpt``.
        input_dim: feature dimension (80 log-mel bins).
        d_model: model width D.
        n_heads: attention heads.
        n_layers: conformer blocks.
        ff_mult: feed-forward hidden width = ``ff_mult * d_model``.
        conv_kernel: causal depthwise convolution kernel (cache of ``conv_kernel - 1`` frames).
        subsampling_channels: channels of the two Conv2d subsampling layers (None = d_model).
        dropout: residual / feed-forward dropout.
        attn_dropout: dropout on attention weights (SDPA kernel only).
        pos: self-attention positions, ``"rel"`` (conformer relative), ``"rotary"`` or ``"none"``.
        kernel: ``"sdpa"``, or ``"flex"`` for FlexAttention block masks (used on CUDA only; CPU
            falls back to SDPA).
        query_chunk: queries per attention slice in ``forward`` (memory bound for long inputs).
        train_block_sizes: block sizes (encoder frames) sampled by dynamic block training;
            ``None`` = full context.
        train_left_blocks: left contexts (blocks) sampled alongside; ``None`` = unlimited.
        bpt: Blockwise Parallel Transformer for ``forward`` (training and offline encoding, every
            block mask); ``None`` = off (the plain path). ``kernel`` and ``query_chunk`` do not
            apply to a BPT ``forward``; streaming ``step`` is unaffected.
    """

    kind: Literal["conformer", "contextual_block"] = "conformer"
    input_dim: int = 80
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 12
    ff_mult: int = 4
    conv_kernel: int = 15
    subsampling_channels: int | None = None
    dropout: float = 0.1
    attn_dropout: float = 0.0
    pos: Literal["rel", "rotary", "none"] = "rel"
    kernel: Literal["sdpa", "flex"] = "sdpa"
    query_chunk: int = 1024
    train_block_sizes: tuple[int | None, ...] = (None, 8, 16, 32)
    train_left_blocks: tuple[int | None, ...] = (None, 2, 4, 8)
    bpt: BPTConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("conformer", "contextual_block"):
            raise ValueError(f"EncoderConfig: kind must be 'conformer' or 'contextual_block', got {self.kind!r}")
        if self.kind == "contextual_block":
            # the context embedding has no position: rotary keys carry absolute rotations that a
            # position-less query could not read relatively (see asr/encoder/contextual.py)
            if self.pos not in ("rel", "none"):
                raise ValueError(f"EncoderConfig: kind 'contextual_block' takes pos 'rel' or 'none', got {self.pos!r}")
            if self.bpt is not None:
                raise ValueError("EncoderConfig: bpt applies to kind 'conformer' only, not 'contextual_block'")
            if self.kernel != "sdpa":
                raise ValueError(f"EncoderConfig: kind 'contextual_block' takes kernel 'sdpa', got {self.kernel!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"EncoderConfig: d_model={self.d_model} not divisible by n_heads={self.n_heads}")
        if self.input_dim < 7:
            raise ValueError(f"EncoderConfig: input_dim must be >= 7 for the x4 subsampling, got {self.input_dim}")
        if self.conv_kernel < 1:
            raise ValueError(f"EncoderConfig: conv_kernel must be >= 1, got {self.conv_kernel}")
        if not self.train_block_sizes or not self.train_left_blocks:
            raise ValueError("EncoderConfig: train_block_sizes and train_left_blocks must not be empty")
        if any(b is not None and b < 1 for b in self.train_block_sizes):
            raise ValueError(f"EncoderConfig: train_block_sizes must be >= 1 or null, got {self.train_block_sizes}")
        if any(n is not None and n < 0 for n in self.train_left_blocks):
            raise ValueError(f"EncoderConfig: train_left_blocks must be >= 0 or null, got {self.train_left_blocks}")

    @classmethod
    def tiny(cls) -> "EncoderConfig":
        """About 0.3M parameters: unit tests and smoke runs."""
        return cls(d_model=64, n_heads=4, n_layers=2, ff_mult=4, conv_kernel=7, subsampling_channels=32)

    @classmethod
    def small(cls) -> "EncoderConfig":
        """About 20M parameters: the default trained model."""
        return cls(d_model=256, n_heads=4, n_layers=12, ff_mult=4, conv_kernel=15)
