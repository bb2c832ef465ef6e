"""Contextual block conformer: one context embedding per block, handed to the next block.

Contextual block processing (Tsunoo, Kashiwagi, Watanabe 2019, "Transformer ASR with contextual
block processing") on top of :class:`~asr.encoder.conformer.ConformerEncoder`: every block ``b``
carries one extra token, its context embedding, through the conformer layers.

* Layer 0: the context embedding of block ``b`` is the mean of the block's (subsampled) frames.
* Layer ``l + 1``: the context input of block ``b`` is layer ``l``'s output at the context
  position of block ``b - 1`` (block 0 keeps its own). Information so travels across blocks
  through the context embeddings (one block further per layer), on top of the left-context KV
  cache that the plain block encoder has. (ESPnet's contextual block encoders keep two positions
  per block, the handed-over context and the block's own summary stream; here one token is both:
  its input is the handed-over context, its output the block's summary handed on.)
* Attention: a block's frames attend their block-causal frames (own block + ``left_blocks``
  earlier ones, as in the plain encoder) and their block's context embedding; the context
  embedding attends the same frames and itself (:func:`~asr.attention.contextual_block_mask_range`).
  Context embeddings are never cached: a later block sees an earlier one only through its own
  context input.
* Positions: the context embedding has none. With ``pos="rel"`` the pairs that involve it get
  the content term only (``MultiHeadAttention.attend(positioned=...)``); rotary positions are
  refused by :class:`~asr.encoder.config.EncoderConfig` (cached rotary keys carry absolute
  rotations, which a position-less query would read absolutely).
* Convolution: over the frames only; the context embedding skips the convolution module (a
  depthwise convolution over one token per block would mix it with frames of another time
  scale). It goes through every pointwise part: both feed-forward modules, the attention
  projections and the LayerNorms, with the frames' weights.
* ``block_size=None`` (full context): the whole utterance is block 0 and its context embedding is
  one global token that keeps its own residual stream through the layers.

Streaming is exact as in the plain encoder: ``step`` runs the ready blocks of all layers with the
same masks, and :class:`ContextualState` carries, per layer, the last block's context output
(the next block's context input one layer up). The parameters are those of
:class:`ConformerEncoder` (same names), so its weights load into this encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from asr.attention import KVCache, MultiHeadAttention, combine_with_padding, contextual_block_mask_range, padding_mask
from asr.encoder.conformer import ConformerEncoder, EncoderState, _check_block_args
from asr.encoder.config import EncoderConfig
from asr.encoder.layers import ConformerLayer
from asr.encoder.subsampling import subsampled_length

__all__ = ["ContextualBlockEncoder", "ContextualState"]


@dataclass(frozen=True)
class ContextualState(EncoderState):
    """:class:`EncoderState` plus the context embeddings handed to the next block.

    Attributes:
        ctx: per layer ``l < n_layers - 1``, (B, 1, D) layer ``l``'s output at the context position
            of the last block processed: the context input of layer ``l + 1`` for the next block.
            None before the first block (block 0 keeps its own context embedding).
    """

    ctx: tuple[torch.Tensor, ...] | None = None


class ContextualBlockEncoder(ConformerEncoder):
    """Conv2d x4 subsampling + conformer layers with contextual block processing (module docstring).

    Same interface as :class:`ConformerEncoder`: ``forward``, ``sample_block_config``,
    ``init_state``, ``step``, ``step_batch``; the outputs are the frames only.

    Args:
        cfg: :class:`EncoderConfig` with ``kind="contextual_block"``.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        if cfg.kind != "contextual_block":
            raise ValueError(f"ContextualBlockEncoder needs EncoderConfig.kind 'contextual_block', got {cfg.kind!r}")
        super().__init__(cfg)

    # ---------------------------------------------------------------- training / offline
    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        block_size: int | None = None,
        left_blocks: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch, all blocks of a layer at once.

        Args:
            x: (B, T, F) normalised features.
            x_lens: (B,) valid feature frames.
            block_size: frames per block; None = full context (one block per utterance).
            left_blocks: blocks of left context for the frames' attention; None = unlimited.

        Returns:
            y (B, T', D) with zeros at padded frames, y_lens (B,) (as :meth:`ConformerEncoder.forward`).
        """
        _check_block_args(block_size, left_blocks)
        x_lens = x_lens.to(x.device)
        y = self.dropout(self.subsampling(x))  # (B, T', D)
        y_lens = subsampled_length(x_lens)
        t = y.shape[1]
        if t == 0:
            return y, y_lens
        valid = padding_mask(y_lens, t)  # (B, T')
        size = t if block_size is None else block_size
        n_blocks = -(-t // size)
        block_valid = torch.arange(n_blocks, device=y.device)[None, :] * size < y_lens[:, None]  # (B, NB)
        c = _block_means(y, valid, size)  # (B, NB, D)
        for i, layer in enumerate(self.layers):
            y, c_out = self._layer_forward(layer, y, c, valid, block_valid, block_size, left_blocks)
            c = torch.cat([c_out[:, :1], c_out[:, :-1]], dim=1)  # block b reads block b - 1's; block 0 its own
        return y.masked_fill(~valid[..., None], 0.0), y_lens

    def _layer_forward(
        self,
        layer: ConformerLayer,
        y: torch.Tensor,
        c: torch.Tensor,
        valid: torch.Tensor,
        block_valid: torch.Tensor,
        block_size: int | None,
        left_blocks: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer over frames y (B, T, D) and context inputs c (B, NB, D) -> both outputs."""
        t = y.shape[1]
        z = torch.cat([y, c], dim=1)  # (B, T + NB, D): pointwise modules see both kinds of token
        z = z + 0.5 * layer.ff1(z)
        z = z + layer.dropout(self._attention_forward(layer.attn, layer.norm_attn(z), t, valid, block_valid,
                                                      block_size, left_blocks))
        frames = z[:, :t] + layer.conv(z[:, :t], valid)  # the context embeddings skip the convolution
        z = torch.cat([frames, z[:, t:]], dim=1)
        z = layer.norm_out(z + 0.5 * layer.ff2(z))
        return z[:, :t], z[:, t:]

    def _attention_forward(
        self,
        attn: MultiHeadAttention,
        h: torch.Tensor,
        t: int,
        valid: torch.Tensor,
        block_valid: torch.Tensor,
        block_size: int | None,
        left_blocks: int | None,
    ) -> torch.Tensor:
        """Self-attention of frames ``h[:, :t]`` (B, T, D) and context embeddings ``h[:, t:]`` (B, NB, D)
        -> (B, T + NB, D).

        Queries run ``query_chunk`` frames (whole blocks) at a time, with their blocks' context
        embeddings, against only the frames those blocks may see (memory O(T) with bounded left
        context, as :meth:`MultiHeadAttention.forward_blockwise`).
        """
        q, k, v = attn.project_self(h, 0)  # (B, H, T + NB, dh); pos "rel"/"none": no rotation
        q, qc = q[:, :, :t], q[:, :, t:]
        k, kc = k[:, :, :t], k[:, :, t:]
        v, vc = v[:, :, :t], v[:, :, t:]
        step = t if block_size is None else max(1, self.cfg.query_chunk // block_size) * block_size
        frames, ctx = [], []
        for q0 in range(0, t, step):
            q1 = min(t, q0 + step)
            k0, k1, b0, b1 = 0, t, 0, 1
            if block_size is not None:
                k1, b0, b1 = q1, q0 // block_size, -(-q1 // block_size)
                if left_blocks is not None:
                    k0 = max(0, (b0 - left_blocks) * block_size)
            mask = contextual_block_mask_range(q0, q1 - q0, k0, k1 - k0, block_size, left_blocks, h.device)
            mask = combine_with_padding(mask, torch.cat([valid[:, q0:q1], block_valid[:, b0:b1]], dim=1),
                                        torch.cat([valid[:, k0:k1], block_valid[:, b0:b1]], dim=1))
            out = _attend(attn, q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], qc[:, :, b0:b1], kc[:, :, b0:b1],
                          vc[:, :, b0:b1], q0, k0, mask)
            frames.append(out[:, :, : q1 - q0])
            ctx.append(out[:, :, q1 - q0 :])
        return attn.merge_heads(torch.cat(frames + ctx, dim=2))

    # ---------------------------------------------------------------- streaming
    def init_state(
        self,
        batch_size: int,
        block_size: int | None,
        left_blocks: int | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ContextualState:
        """Empty streaming state for ``batch_size`` equal-length streams."""
        base = super().init_state(batch_size, block_size, left_blocks, device, dtype)
        return ContextualState(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})

    def _layers(self, y: torch.Tensor, state: ContextualState) -> tuple[torch.Tensor, ContextualState]:
        """The layers over ``y`` (B, ready, D), the frames right after ``state.offset`` (whole
        blocks, or the stream's last frames at ``final``)."""
        size = y.shape[1] if state.block_size is None else state.block_size
        c = _block_means(y, None, size)  # (B, n, D): offset is a block boundary
        kv0 = state.kv[0]  # every layer's cache covers the same positions
        mask = contextual_block_mask_range(state.offset, y.shape[1], kv0.start, kv0.length + y.shape[1],
                                           state.block_size, state.left_blocks, y.device)
        mask = None if bool(mask.all()) else mask
        kv_out, conv_out, ctx_out = [], [], []
        for i, layer in enumerate(self.layers):
            y, c_out, kv, conv = self._layer_step(layer, y, c, state.kv[i], state.conv[i], mask)
            kv_out.append(kv)
            conv_out.append(conv)
            if i + 1 < len(self.layers):
                first = c_out[:, :1] if state.ctx is None else state.ctx[i]
                c = torch.cat([first, c_out[:, :-1]], dim=1)
                ctx_out.append(c_out[:, -1:])
        return y, dataclasses.replace(state, kv=tuple(kv_out), conv=tuple(conv_out), ctx=tuple(ctx_out),
                                      offset=state.offset + y.shape[1])

    def _layer_step(
        self, layer: ConformerLayer, y: torch.Tensor, c: torch.Tensor, kv: KVCache, conv: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, KVCache, torch.Tensor]:
        """:meth:`_layer_forward` for new frames y (B, t, D) and their blocks' context inputs c (B, n, D)
        against the layer's KV and conv caches, with the :func:`contextual_block_mask_range` of
        those (None = all) -> (frames, context outputs, new KV cache, new conv cache)."""
        t = y.shape[1]
        attn = layer.attn
        z = torch.cat([y, c], dim=1)
        z = z + 0.5 * layer.ff1(z)
        # frames and context embeddings projected together (no rotation: pos is "rel" or "none")
        q, k, v = attn.project_self(layer.norm_attn(z), kv.end)  # (B, H, t + n, dh)
        k_all, v_all = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)  # cache, frames, contexts
        a = attn.attend(q, k_all, v_all, q_start=kv.end, k_start=kv.start, mask=mask,
                        positioned=(t, kv.length + t))
        z = z + layer.dropout(attn.merge_heads(a))
        c_frames, conv = layer.conv.step(z[:, :t], conv)
        z = torch.cat([z[:, :t] + c_frames, z[:, t:]], dim=1)
        z = layer.norm_out(z + 0.5 * layer.ff2(z))
        s = kv.length + t  # the frames' keys are cached, the context embeddings' are not
        return z[:, :t], z[:, t:], KVCache(k_all[:, :, :s], v_all[:, :, :s], kv.start, kv.max_len).trimmed(), conv

    # ---------------------------------------------------------------- step_batch hooks
    def _group_key(self, y: torch.Tensor, s: ContextualState) -> tuple:
        return (*super()._group_key(y, s), s.ctx is None)

    def _stack_states(self, states: list[ContextualState]) -> ContextualState:
        batched = super()._stack_states(states)
        if states[0].ctx is None:
            return batched
        ctx = tuple(torch.cat([s.ctx[l] for s in states]) for l in range(len(states[0].ctx)))
        return dataclasses.replace(batched, ctx=ctx)

    def _row_states(self, new: ContextualState, batched: ContextualState,
                    olds: list[ContextualState]) -> list[ContextualState]:
        ctx_rows = [c.split(1) for c in new.ctx]
        return [dataclasses.replace(out, ctx=tuple(c[row] for c in ctx_rows))
                for row, out in enumerate(super()._row_states(new, batched, olds))]


def _attend(
    attn: MultiHeadAttention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qc: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    q_start: int,
    k_start: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Frames q (B, H, t, dh) at ``q_start ..`` and context embeddings qc (B, H, n, dh) against
    frame keys k, v (B, H, s, dh) at ``k_start ..`` and the context keys kc, vc (B, H, n, dh)
    -> (B, H, t + n, dh); only frame-frame pairs get a relative-position term."""
    return attn.attend(torch.cat([q, qc], dim=2), torch.cat([k, kc], dim=2), torch.cat([v, vc], dim=2),
                       q_start=q_start, k_start=k_start, mask=mask, positioned=(q.shape[2], k.shape[2]))


def _block_means(y: torch.Tensor, valid: torch.Tensor | None, size: int) -> torch.Tensor:
    """Mean of the valid frames of each block of ``size`` frames: (B, T, D) -> (B, ceil(T / size), D).

    A block without valid frames gets zeros (its context embedding is never read by a valid frame).
    """
    b, t, d = y.shape
    n = -(-t // size)
    w = torch.ones(b, t, device=y.device, dtype=y.dtype) if valid is None else valid.to(y.dtype)
    pad = n * size - t
    ys = torch.nn.functional.pad(y * w[..., None], (0, 0, 0, pad)).view(b, n, size, d).sum(2)
    count = torch.nn.functional.pad(w, (0, pad)).view(b, n, size).sum(2)  # (B, n)
    return ys / count.clamp(min=1)[..., None]
