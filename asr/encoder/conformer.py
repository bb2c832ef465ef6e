"""Blockwise conformer encoder with exact streaming.

``forward`` runs a whole (padded) batch with a block-causal attention mask; ``init_state`` /
``step`` run the same computation block by block on a stream of feature chunks of any length.
For the same input and the same ``(block_size, left_blocks)`` both give the same frames (up to
float rounding), which ``tests/test_encoder.py`` checks.

Why streaming is exact:

* subsampling has no time padding: encoder frame ``t`` depends on feature frames ``4t .. 4t+6``;
* attention is block-causal: a block's frames see their own block and ``left_blocks`` earlier
  blocks, which the per-layer KV cache holds;
* the depthwise convolution is causal (left padding only) and its cache holds the last
  ``kernel - 1`` inputs; LayerNorm everywhere, no batch statistics;
* padding never reaches valid frames: padded keys are masked and padded conv inputs zeroed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from asr.attention import KVCache, block_causal_mask_range, padding_mask
from asr.encoder.config import EncoderConfig
from asr.encoder.layers import ConformerLayer
from asr.encoder.slots import SlotConv, SlotKV, pool_for
from asr.encoder.subsampling import CPU_MAX_FRAMES, STRIDE, Conv2dSubsampling, subsampled_length

__all__ = ["ConformerEncoder", "EncoderState", "FRAME_MS", "block_size_from_ms"]

FRAME_MS = 40  # one encoder frame per 40 ms (10 ms features, x4 subsampling)


def block_size_from_ms(block_ms: int | None) -> int | None:
    """Block size in encoder frames for a block length in ms (``None`` = full context).

    Example: 320 -> 8, 640 -> 16, 1280 -> 32.
    """
    if block_ms is None:
        return None
    if block_ms < FRAME_MS or block_ms % FRAME_MS:
        raise ValueError(f"block_ms must be a positive multiple of {FRAME_MS}, got {block_ms}")
    return block_ms // FRAME_MS


@dataclass(frozen=True)
class EncoderState:
    """Streaming state of :class:`ConformerEncoder` for a batch of equal-length streams.

    Attributes:
        block_size: encoder frames per block (None = everything is one block, emitted at ``final``).
        left_blocks: blocks of left context (None = unlimited).
        feats: (B, t, F) feature frames not yet consumed by the subsampling (starts at feature
            frame ``4 * (offset + frames.shape[1])``).
        frames: (B, t', D) subsampled frames waiting for their block to complete.
        kv: per-layer attention caches (the last ``left_blocks * block_size`` frames): a tuple, or
            for a stream that :meth:`ConformerEncoder.step_batch` put into a cache slot a
            :class:`~asr.encoder.slots.SlotKV`, which reads as one (see :mod:`asr.encoder.slots`).
        conv: per-layer causal-conv caches, (B, conv_kernel - 1, D) each (a tuple or a
            :class:`~asr.encoder.slots.SlotConv`).
        offset: encoder frames emitted so far (absolute position of ``frames[:, 0]``).
        finished: True after a ``final`` step.
    """

    block_size: int | None
    left_blocks: int | None
    feats: torch.Tensor
    frames: torch.Tensor
    kv: Sequence[KVCache]
    conv: Sequence[torch.Tensor]
    offset: int = 0
    finished: bool = False


class ConformerEncoder(nn.Module):
    """Conv2d x4 subsampling + ``n_layers`` macaron conformer blocks with block-causal attention.

    Args:
        cfg: :class:`EncoderConfig`.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.subsampling_channels or cfg.d_model
        self.subsampling = Conv2dSubsampling(cfg.input_dim, cfg.d_model, channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            ConformerLayer(cfg.d_model, cfg.n_heads, cfg.ff_mult, cfg.conv_kernel, cfg.dropout, cfg.attn_dropout, cfg.pos)
            for _ in range(cfg.n_layers)
        )

    @property
    def output_dim(self) -> int:
        return self.cfg.d_model

    @staticmethod
    def output_lengths(x_lens: torch.Tensor) -> torch.Tensor:
        """Encoder frames for (B,) feature-frame lengths."""
        return subsampled_length(x_lens)

    # ---------------------------------------------------------------- training / offline
    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        block_size: int | None = None,
        left_blocks: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch.

        Args:
            x: (B, T, F) normalised features.
            x_lens: (B,) valid feature frames.
            block_size: frames per attention block; None = full context (padding-masked).
            left_blocks: blocks of left context; None = unlimited.

        With ``cfg.bpt`` set, attention, feed-forward, convolution modules and subsampling run
        blockwise under recomputation (Blockwise Parallel Transformer, :mod:`asr.attention.bpt`):
        the same frames, training memory linear in T.

        Returns:
            y (B, T', D) with zeros at padded frames, y_lens (B,) where
            ``T' = ((T - 1) // 2 - 1) // 2``.
        """
        _check_block_args(block_size, left_blocks)
        x_lens = x_lens.to(x.device)
        bpt = self.cfg.bpt
        if bpt is None:
            y = self.dropout(self.subsampling(x))  # (B, T', D)
        else:
            y = self.dropout(self.subsampling(x, chunk_frames=bpt.frame_block, recompute=True))
        y_lens = subsampled_length(x_lens)
        if y.shape[1] == 0:
            return y, y_lens
        valid = padding_mask(y_lens, y.shape[1])  # (B, T')
        kernel = "flex" if self.cfg.kernel == "flex" and x.is_cuda else "sdpa"
        for layer in self.layers:
            y = layer(y, y_lens, valid, block_size, left_blocks, query_chunk=self.cfg.query_chunk, kernel=kernel,
                      bpt=bpt)
        return y.masked_fill(~valid[..., None], 0.0), y_lens

    def sample_block_config(self, generator: torch.Generator | None = None) -> tuple[int | None, int | None]:
        """Dynamic block training: draw ``(block_size, left_blocks)`` uniformly from the config.

        The trainer calls this once per batch and passes the result to :meth:`forward`; a
        ``None`` block size (full context) comes with ``left_blocks=None``.
        """
        sizes, lefts = self.cfg.train_block_sizes, self.cfg.train_left_blocks
        block_size = sizes[int(torch.randint(len(sizes), (1,), generator=generator))]
        left_blocks = lefts[int(torch.randint(len(lefts), (1,), generator=generator))]
        return (None, None) if block_size is None else (block_size, left_blocks)

    # ---------------------------------------------------------------- streaming
    def init_state(
        self,
        batch_size: int,
        block_size: int | None,
        left_blocks: int | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> EncoderState:
        """Empty streaming state for ``batch_size`` equal-length streams."""
        _check_block_args(block_size, left_blocks)
        cfg = self.cfg
        max_len = None if block_size is None or left_blocks is None else block_size * left_blocks
        heads, head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        return EncoderState(
            block_size=block_size,
            left_blocks=left_blocks,
            feats=torch.zeros(batch_size, 0, cfg.input_dim, device=device, dtype=dtype),
            frames=torch.zeros(batch_size, 0, cfg.d_model, device=device, dtype=dtype),
            kv=tuple(KVCache.empty(batch_size, heads, head_dim, max_len, device, dtype) for _ in self.layers),
            conv=tuple(layer.conv.init_cache(batch_size, cfg.d_model, device, dtype) for layer in self.layers),
        )

    def step(
        self, x: torch.Tensor, state: EncoderState, final: bool = False
    ) -> tuple[torch.Tensor, EncoderState]:
        """Feed feature frames; get the encoder frames of the blocks that became complete.

        Args:
            x: (B, t, F) the next feature frames, any t >= 0.
            state: from :meth:`init_state` or the previous ``step``.
            final: the stream ends here: also emit the trailing partial block (and drop the
                < 7 leftover feature frames, exactly as :meth:`forward` does).

        Returns:
            y (B, n, D) — n is a multiple of ``block_size`` unless ``final`` — and the new state.
        """
        y, state = self._front(x, state, final)
        if y.shape[1] == 0:
            return y, state
        return self._layers(y, state)

    def step_batch(
        self, xs: list[torch.Tensor], states: list[EncoderState], final: bool | Sequence[bool] = False
    ) -> list[tuple[torch.Tensor, EncoderState]]:
        """:meth:`step` for several independent single streams at once (a server's sessions).

        The subsampling runs once over every stream's new feature frames (with the frames each
        state keeps for the convolutions' overlap), zero-padded to one length
        (:meth:`Conv2dSubsampling.compute_many`). Then streams with the same number of ready frames
        whose caches have the same shape and the same positions relative to the new frames (every
        stream in steady state: full left context, block-aligned) go through the conformer layers
        as one batch. Masks and relative positions depend only on position differences, so each
        result equals ``step(xs[i], states[i], final[i])``. Streams with a bounded left context
        keep their caches in slots of one tensor per layer (:mod:`asr.encoder.slots`): the batch is
        gathered from them and written back, and a state whose slot this call writes is consumed
        (step the returned one; the old one raises).

        Args:
            xs: (1, t_i, F) feature frames per stream. states: their (batch-1) states.
            final: for all streams, or one flag per stream (streams ending in this call).
        Returns:
            ``(y_i, state_i)`` per stream, as :meth:`step` returns them.
        """
        finals = [final] * len(xs) if isinstance(final, bool) else list(final)
        fronts = self._fronts(xs, states, finals)
        out: list[tuple[torch.Tensor, EncoderState] | None] = [None] * len(fronts)
        groups: dict[tuple, list[int]] = {}
        for i, (y, s) in enumerate(fronts):
            if y.shape[1] == 0 or y.shape[0] != 1:
                out[i] = (y, s) if y.shape[1] == 0 else self._layers(y, s)
                continue
            groups.setdefault(self._group_key(y, s), []).append(i)
        for members in groups.values():
            if len(members) == 1:
                i = members[0]
                out[i] = self._layers(*fronts[i])
                continue
            batched = self._stack_states([fronts[i][1] for i in members])
            y, new = self._layers(torch.cat([fronts[i][0] for i in members]), batched)
            rows = self._row_states(new, batched, [fronts[i][1] for i in members])
            for i, y_row, state in zip(members, y.split(1), rows):
                out[i] = (y_row, state)
        return out  # type: ignore[return-value]

    def _fronts(self, xs: list[torch.Tensor], states: list[EncoderState],
                finals: list[bool]) -> list[tuple[torch.Tensor, EncoderState]]:
        """:meth:`_front` of each stream. Batch-1 streams of one dtype (a server's sessions) share one
        subsampling call, and the state's frames join the new ones in one cat and one split for all
        the streams, not one cat per stream; any other mix runs :meth:`_front` stream by stream."""
        if not xs:
            return []
        dtype = states[0].feats.dtype
        if not all(x.shape[0] == 1 and s.feats.shape[0] == 1 and s.feats.dtype == dtype for x, s in zip(xs, states)):
            return [self._front(x, s, f) for x, s, f in zip(xs, states, finals)]
        for s in states:
            _check_not_finished(s)
        # every stream's kept and new feature frames in one (1, sum t_i, F) tensor; the frames the
        # subsampling does not consume (< 7 each) and each stream's waiting / ready encoder frames
        # come out of it as views of one split: no tensor op per stream but the (n_i, D) -> (1, n_i, D)
        pieces = [t for x, s in zip(xs, states) for t in (s.feats, x if x.dtype == dtype else x.to(dtype))]
        lens = [p.shape[1] for p in pieces]
        t_all = [a + b for a, b in zip(lens[0::2], lens[1::2])]
        feats = torch.cat(pieces, dim=1)
        n_new = [subsampled_length(t) for t in t_all]
        live = [i for i, n in enumerate(n_new) if n]
        rows = feats[0].split(t_all)  # (t_i, F): the subsampling makes exactly n_i frames of each
        bound = CPU_MAX_FRAMES if states[0].feats.device.type == "cpu" else None
        ys = self.subsampling.compute_many([rows[i] for i in live], max_frames=bound)
        kept = feats.split([v for t, n in zip(t_all, n_new) for v in (STRIDE * n, t - STRIDE * n)], dim=1)[1::2]
        new: list[torch.Tensor | None] = [None] * len(states)
        for i, y in zip(live, ys):
            new[i] = (self.dropout(y) if self.training else y).unsqueeze(0)  # (no module call per stream when serving)
        pieces, sizes = [], []
        for s, y in zip(states, new):
            pieces.append(s.frames)
            if y is not None:
                pieces.append(y)
            sizes.append(s.frames.shape[1] + (0 if y is None else y.shape[1]))
        ready = [_ready_frames(n, s.block_size, fin) for n, s, fin in zip(sizes, states, finals)]
        parts = torch.cat(pieces, dim=1).split([v for n, r in zip(sizes, ready) for v in (r, n - r)], dim=1)
        return [(parts[2 * i], _evolve(s, feats=kept[i], frames=parts[2 * i + 1], finished=fin))
                for i, (s, fin) in enumerate(zip(states, finals))]

    def _group_key(self, y: torch.Tensor, s: EncoderState) -> tuple:
        """Streams with equal keys can share one batched :meth:`_layers` call (see :meth:`step_batch`)."""
        kv0 = _first_kv(s)
        phase = s.offset % s.block_size if s.block_size else s.offset
        return (y.shape[1], s.block_size, s.left_blocks, kv0.length, s.offset - kv0.start, phase)

    def _stack_states(self, states: list[EncoderState]) -> EncoderState:
        """Batch-1 states of one :meth:`_group_key` group -> one batched state (positions of the first).
        States in slots of one pool are gathered from it (see :mod:`asr.encoder.slots`)."""
        first = states[0]
        if isinstance(first.kv, SlotKV) and all(isinstance(s.kv, SlotKV) and s.kv.slot.pool is first.kv.slot.pool
                                                for s in states):
            for s in states:
                s.kv.check()
            pool = first.kv.slot.pool
            kv, conv = pool.gather(pool.index([s.kv.slot for s in states]), first.kv.start, first.kv.max_len)
            return dataclasses.replace(first, kv=kv, conv=conv)
        return dataclasses.replace(
            first,
            kv=tuple(KVCache(torch.cat([s.kv[l].k for s in states]), torch.cat([s.kv[l].v for s in states]),
                             kv.start, kv.max_len)
                     for l, kv in enumerate(first.kv)),
            conv=tuple(torch.cat([s.conv[l] for s in states]) for l in range(len(first.conv))),
        )

    def _row_states(self, new: EncoderState, batched: EncoderState, olds: list[EncoderState]) -> list[EncoderState]:
        """The rows of the batched result ``new`` as the next states of the streams whose states
        were ``olds``. Bounded caches go into slots, one ``index_copy_`` per tensor
        (:mod:`asr.encoder.slots`): a pool per cache length, so at most ``max_len + 1`` pools, and
        from the stream's fifth block (C = 16, L = 4) on, one pool and the same slot every block.
        Unbounded caches (``left_blocks`` None: a new length every block) are split into per-stream
        rows, one ``split`` per tensor."""
        moved = new.offset - batched.offset
        kv0 = new.kv[0]
        if kv0.max_len is not None:
            pool = pool_for(self, kv0, new.conv[0], len(new.kv))
            slots = [s.kv.slot if isinstance(s.kv, SlotKV) and s.kv.slot.pool is pool else None for s in olds]
            missing = [i for i, slot in enumerate(slots) if slot is None]
            for i, slot in zip(missing, pool.allocate(len(missing))):
                slots[i] = slot
            versions = pool.scatter(slots, pool.index(slots), new.kv, new.conv)
            shift = kv0.start - batched.kv[0].start
            return [_evolve(s, kv=SlotKV(slot, version, _first_kv(s).start + shift, kv0.max_len),
                            conv=SlotConv(slot, version), offset=s.offset + moved)
                    for s, slot, version in zip(olds, slots, versions)]
        kv_rows = [list(zip(n.k.split(1), n.v.split(1))) for n in new.kv]  # [layer][row] -> (k, v)
        conv_rows = [c.split(1) for c in new.conv]
        out = []
        for row, s in enumerate(olds):
            start = _first_kv(s).start + new.kv[0].start - batched.kv[0].start  # every layer covers the same positions
            kv = tuple(KVCache(*kv_rows[l][row], start, n.max_len) for l, n in enumerate(new.kv))
            conv = tuple(c[row] for c in conv_rows)
            out.append(_evolve(s, kv=kv, conv=conv, offset=s.offset + moved))
        return out

    def _front(self, x: torch.Tensor, state: EncoderState, final: bool) -> tuple[torch.Tensor, EncoderState]:
        """Subsampling: the frames of the blocks that became complete, and the state holding the rest."""
        feats = self._front_input(x, state)
        n_new = subsampled_length(feats.shape[1])
        new = self.dropout(self.subsampling.compute(feats[:, : STRIDE * n_new + 3])) if n_new > 0 else None
        return self._front_split(state, feats, new, final)

    @staticmethod
    def _front_input(x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        """The feature frames the subsampling sees: the state's unconsumed ones, then ``x``."""
        _check_not_finished(state)
        return torch.cat([state.feats, x.to(state.feats.dtype)], dim=1)

    @staticmethod
    def _front_split(state: EncoderState, feats: torch.Tensor, new: torch.Tensor | None,
                     final: bool) -> tuple[torch.Tensor, EncoderState]:
        """After the subsampling turned ``feats`` into ``new`` (B, n, D) frames (None: none): the ready
        frames and the state holding the rest."""
        frames = state.frames
        if new is not None:
            feats = feats[:, STRIDE * new.shape[1] :]
            frames = torch.cat([frames, new], dim=1)
        ready = _ready_frames(frames.shape[1], state.block_size, final)
        return frames[:, :ready], dataclasses.replace(state, feats=feats, frames=frames[:, ready:], finished=final)

    def _layers(self, y: torch.Tensor, state: EncoderState) -> tuple[torch.Tensor, EncoderState]:
        """The conformer layers over ``y`` (B, ready, D), the frames right after ``state.offset``."""
        ready = y.shape[1]
        kv0 = state.kv[0]
        mask = block_causal_mask_range(
            state.offset, ready, kv0.start, kv0.length + ready, state.block_size, state.left_blocks, y.device
        )
        mask = None if bool(mask.all()) else mask
        kv, conv = [], []
        for layer, layer_kv, layer_conv in zip(self.layers, state.kv, state.conv):
            y, layer_kv, layer_conv = layer.step(y, layer_kv, layer_conv, mask)
            kv.append(layer_kv)
            conv.append(layer_conv)
        return y, dataclasses.replace(state, kv=tuple(kv), conv=tuple(conv), offset=state.offset + ready)


def _evolve(state, **changes):
    """``dataclasses.replace`` for the per-stream states of a pass, without running ``__init__``
    again (replace took ~17 us; a 2048-stream pass made two per stream)."""
    out = object.__new__(type(state))
    out.__dict__.update(state.__dict__)
    out.__dict__.update(changes)
    return out


def _first_kv(state: EncoderState) -> KVCache | SlotKV:
    """What ``start`` and ``length`` of the state's attention caches are read from (every layer
    covers the same positions): a slot's view itself, else layer 0's cache."""
    return state.kv if isinstance(state.kv, SlotKV) else state.kv[0]


def _ready_frames(n: int, block_size: int | None, final: bool) -> int:
    """Of ``n`` subsampled frames waiting, those the layers take now: whole blocks (all at the end)."""
    if final:
        return n
    if block_size is None:
        return 0  # full context: everything is one block, emitted at the end
    return (n // block_size) * block_size


def _check_not_finished(state: EncoderState) -> None:
    if state.finished:
        raise RuntimeError("step() called after final=True; start a new stream with init_state()")


def _check_block_args(block_size: int | None, left_blocks: int | None) -> None:
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    if left_blocks is not None and (not isinstance(left_blocks, int) or left_blocks < 0):
        raise ValueError(f"left_blocks must be a non-negative int or None, got {left_blocks!r}")
