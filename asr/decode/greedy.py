"""Greedy CTC collapse of many streams' label rows at once, in numpy (a server round: no Python
loop over frames, and none over the streams that emit nothing).

It is :func:`asr.search.ctc.ctc_greedy_labels` of each row: a frame spikes when its label is not
blank and differs from the label of the frame before it (for the row's first frame: the stream's
carried ``prev_label``), so a label run crossing a block boundary is one token
(``tests/test_decode_greedy.py`` checks the two against each other).
"""

from __future__ import annotations

from itertools import chain
from typing import NamedTuple, Sequence

import numpy as np

from asr.tokenizer import BLANK

__all__ = ["Spikes", "greedy_spikes", "label_rows"]


class Spikes(NamedTuple):
    """Every spike of a batch of label rows, row by row and in frame order.

    Row ``i``'s spikes are ``tokens[bounds[i]:bounds[i + 1]]`` at frames ``frames[...]`` (the
    frame's index in its row plus that row's ``offsets[i]``); those before frame ``cuts[i]`` are
    ``tokens[bounds[i]:mids[i]]``. ``last``: each row's label at frame ``cuts[i] - 1``, or its
    ``prev_label`` when ``cuts[i]`` is 0 (the greedy state after the row's first ``cuts[i]`` frames).
    """

    tokens: list[int]
    frames: list[int]
    bounds: list[int]
    mids: list[int]
    last: list[int]


def greedy_spikes(labels: np.ndarray, lens: np.ndarray, prev_label: np.ndarray, offsets: np.ndarray,
                  cuts: np.ndarray | None = None, blank: int = BLANK) -> Spikes:
    """Greedy CTC spikes of ``B`` label rows.

    Args:
        labels: (B, W) integer per-frame argmax labels; row ``i`` is valid up to ``lens[i]``.
        lens: (B,) valid frames per row.
        prev_label: (B,) label of the frame before each row (``blank`` at a segment's start).
        offsets: (B,) added to each row's spike frames (the frames that row's stream has had).
        cuts: (B,) where to split each row's spikes (see :class:`Spikes`); None = ``lens``.

    >>> s = greedy_spikes(np.array([[0, 5, 5, 0], [7, 7, 0, 8]]), np.array([4, 3]), np.array([0, 7]),
    ...                   np.array([0, 10]))
    >>> s.tokens, s.frames, s.bounds, s.last
    ([5], [1], [0, 1, 1], [0, 0])
    """
    labels = np.asarray(labels, dtype=np.int64)
    B, W = labels.shape
    lens = np.asarray(lens, dtype=np.int64)
    prev_label = np.asarray(prev_label, dtype=np.int64)
    cuts = lens if cuts is None else np.asarray(cuts, dtype=np.int64)
    before = np.concatenate([prev_label[:, None], labels[:, :-1]], axis=1)  # (B, W) the previous frame's label
    spike = (labels != blank) & (labels != before) & (np.arange(W) < lens[:, None])
    rows, cols = np.nonzero(spike)  # row-major: row by row, frames in order
    key = rows * W + cols  # ascending
    first = np.arange(B + 1, dtype=np.int64) * W
    bounds = np.searchsorted(key, first)
    mids = np.searchsorted(key, first[:-1] + cuts)
    last = np.where(cuts > 0, labels[np.arange(B), np.maximum(cuts - 1, 0)], prev_label)
    return Spikes(labels[rows, cols].tolist(), (cols + np.asarray(offsets, dtype=np.int64)[rows]).tolist(),
                  bounds.tolist(), mids.tolist(), last.tolist())


def label_rows(labels: Sequence[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-stream label lists -> (B, max len) int64 rows padded with blank, and (B,) lengths.

    >>> label_rows([[4, 4], [5], []])
    (array([[4, 4],
           [5, 0],
           [0, 0]]), array([2, 1, 0]))
    """
    lens = np.fromiter((len(lab) for lab in labels), np.int64, len(labels))
    width = int(lens.max(initial=0))
    if (lens == width).all():  # a round's blocks: usually all of one length
        return np.array(labels, dtype=np.int64).reshape(len(labels), width), lens
    rows = np.full((len(labels), width), BLANK, np.int64)
    rows[np.arange(width) < lens[:, None]] = np.fromiter(chain.from_iterable(labels), np.int64, int(lens.sum()))
    return rows, lens
