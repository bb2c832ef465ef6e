"""Duration-bucketing batch sampler: batches bounded by padded seconds, resumable mid-epoch."""

from __future__ import annotations

import random
from typing import Iterator, Sequence

__all__ = ["DurationBatchSampler", "pack_batches"]


def pack_batches(indices: Sequence[int], durations: Sequence[float], max_seconds: float,
                 max_rows: int | None = None) -> list[list[int]]:
    """``indices`` in their order, cut into batches of at most ``max_seconds`` padded seconds
    (longest row x rows) and ``max_rows`` rows; a row longer than ``max_seconds`` is a batch alone."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0.0
    for i in indices:
        d = durations[i]
        full = max_rows is not None and len(batch) >= max_rows
        if batch and (max(longest, d) * (len(batch) + 1) > max_seconds or full):
            batches.append(batch)
            batch, longest = [], 0.0
        batch.append(i)
        longest = max(longest, d)
    if batch:
        batches.append(batch)
    return batches


class DurationBatchSampler:
    """Groups utterances of similar duration so that ``max_len x batch_size <= max_seconds``.

    Each epoch shuffles (seeded by ``seed + epoch``), sorts within pools of ``pool_batches``
    batches' worth of utterances, cuts batches, and shuffles their order. ``state_dict`` records
    the epoch and how many batches were already served, so a resumed run continues with the very
    next batch.

    Args:
        durations: seconds per utterance (index = dataset index).
        max_seconds: bound on padded seconds per batch (longest utterance x batch size).
        shuffle: shuffle utterances and batches (training); otherwise sorted and deterministic.
        seed: base seed. num_replicas / rank: shard batches for data-parallel training.
    """

    def __init__(self, durations: Sequence[float], max_seconds: float, shuffle: bool = True,
                 seed: int = 0, pool_batches: int = 50, num_replicas: int = 1, rank: int = 0,
                 max_utterances: int | None = None):
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        self.durations = list(durations)
        self.max_seconds = max_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.max_utterances = max_utterances
        self.epoch = 0
        self.batches_done = 0

    def _batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.durations)))
        rng = random.Random(self.seed + epoch)
        if self.shuffle:
            rng.shuffle(order)
        mean = sum(self.durations) / max(len(self.durations), 1)
        pool = max(1, int(self.pool_batches * self.max_seconds / max(mean, 1e-3)))
        batches: list[list[int]] = []
        for p in range(0, len(order), pool):
            chunk = sorted(order[p:p + pool], key=lambda i: self.durations[i])
            batches += pack_batches(chunk, self.durations, self.max_seconds, self.max_utterances)
        if self.shuffle:
            rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.num_replicas if self.num_replicas > 1 else len(batches)
        return batches[self.rank:usable:self.num_replicas]

    def __len__(self) -> int:
        return len(self._batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        while self.batches_done < len(batches):
            batch = batches[self.batches_done]
            self.batches_done += 1
            yield batch
        self.epoch += 1
        self.batches_done = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
