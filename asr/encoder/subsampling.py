"""Conv2d x4 subsampling without time padding, so streaming can reproduce it exactly."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from asr.attention.masks import pad_rows

__all__ = ["CPU_MAX_FRAMES", "Conv2dSubsampling", "subsampled_length", "pad_groups"]

RECEPTIVE_FIELD = 7  # input frames behind one output frame: 4t .. 4t + 6
STRIDE = 4
# On CPU the subsampling of many streams is fastest in batches of about 512 input frames (8 rows of
# a 640 ms block at 2 threads: 1.4 ms per stream, 2.4 ms in batches of 32 or 64, whose first
# convolution's output no longer stays in the cache; benchmarks/results/subsampling_rows_cpu.md).
CPU_MAX_FRAMES = 512


def subsampled_length(lens: torch.Tensor | int) -> torch.Tensor | int:
    """Output frames for ``lens`` input frames: ``((n - 1) // 2 - 1) // 2``, at least 0.

    Example: 6 -> 0, 7 -> 1, 10 -> 1, 11 -> 2, 100 -> 24.
    """
    if isinstance(lens, int):
        return max(0, ((lens - 1) // 2 - 1) // 2) if lens >= RECEPTIVE_FIELD else 0
    out = torch.div(torch.div(lens - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor")
    return torch.where(lens >= RECEPTIVE_FIELD, out, torch.zeros_like(out))


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 Conv2d + ReLU, then a linear projection to D.

    Output frame ``t`` depends exactly on input frames ``4t .. 4t + 6`` (no time padding), so a
    stream keeps the input frames from ``4 * (frames emitted)`` on and recomputes only an overlap
    of 3 frames.

    Args:
        input_dim: feature dimension F.
        d_model: output width D.
        channels: convolution channels.
    """

    def __init__(self, input_dim: int, d_model: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2)
        freq = ((input_dim - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * freq, d_model)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, subsampled_length(T), D), all at once."""
        # ReLU in place: the convolutions' outputs are not needed for their backward, and a streaming
        # step saves a 1.3 MB allocation (about 50 us at a 640 ms block)
        h = torch.relu_(self.conv1(x[:, None]))  # (B, C, T1, F1)
        h = torch.relu_(self.conv2(h))  # (B, C, T', F')
        return self.proj(h.transpose(1, 2).flatten(2))  # (B, T', D)

    def compute_many(self, xs: list[torch.Tensor], max_frames: int | None = None) -> list[torch.Tensor]:
        """:meth:`compute` of several independent inputs xs[i] (T_i, F) -> (subsampled_length(T_i), D).

        The inputs are zero-padded at the end and run as batches (:func:`pad_groups` of their output
        lengths, so one long input does not make every row pay for its padding). The convolutions
        have no time padding, so padded input frames reach only output frames past ``n_i``, which are
        dropped: each output is :meth:`compute` of that input alone (up to float rounding).
        ``max_frames``: batches of at most this many (padded) input frames, one row at least (see
        :data:`CPU_MAX_FRAMES`); None = no bound.
        """
        n_out = [subsampled_length(x.shape[0]) for x in xs]
        out: list[torch.Tensor | None] = [None] * len(xs)
        for group in _bounded(pad_groups(n_out), n_out, max_frames):
            y = self.compute(pad_rows([xs[i] for i in group]))  # (G, max n, D)
            for row, i in enumerate(group):
                out[i] = y[row, : n_out[i]]
        return out  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, chunk_frames: int = 1024, recompute: bool = False) -> torch.Tensor:
        """(B, T, F) -> (B, T', D), computed ``chunk_frames`` output frames at a time.

        Chunking gives the same numbers (no padding, exact input windows) and bounds the
        full-resolution convolution activations for long inputs (an hour of audio would
        otherwise need gigabytes for the first conv's output). ``recompute``: with autograd, run
        each chunk under ``torch.utils.checkpoint`` so those activations are not kept for the
        backward pass either (Blockwise Parallel Transformer training).
        """
        compute = self.compute
        if recompute and torch.is_grad_enabled():
            compute = functools.partial(checkpoint, self.compute, use_reentrant=False)
        t_out = subsampled_length(x.shape[1])
        if t_out == 0:
            return x.new_zeros(x.shape[0], 0, self.proj.out_features)
        if t_out <= chunk_frames:
            return compute(x[:, : STRIDE * t_out + 3])
        outs = []
        for o0 in range(0, t_out, chunk_frames):
            o1 = min(t_out, o0 + chunk_frames)
            outs.append(compute(x[:, STRIDE * o0 : STRIDE * o1 + 3]))
        return torch.cat(outs, dim=1)


def _bounded(groups: list[list[int]], n_out: list[int], max_frames: int | None) -> list[list[int]]:
    """``groups`` cut into runs of rows whose padded input (rows x longest input) stays within
    ``max_frames`` feature frames."""
    if max_frames is None:
        return groups
    out = []
    for group in groups:
        rows = max(1, max_frames // (STRIDE * max(n_out[i] for i in group) + 3))
        out += [group[k:k + rows] for k in range(0, len(group), rows)]
    return out


def pad_groups(lengths: list[int], max_waste: float = 2.0) -> list[list[int]]:
    """Indices of ``lengths`` (> 0) in groups to pad to one length, so that each group's padded size
    ``len(group) * max(length)`` is at most ``max_waste`` times its real size ``sum(length)``.

    Greedy over the lengths in ascending order. Example: [3, 2, 50, 3, 2] -> [[1, 4, 0, 3], [2]].
    """
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        n = lengths[i]
        if groups and (len(groups[-1]) + 1) * n <= max_waste * (total + n):
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups
