"""Utterance dataset returning waveforms and token ids; features are computed batched downstream.

Reading audio in the data loader workers and computing fbank on the training device (batched, see
:class:`asr.features.Fbank`) keeps the loader light and the features identical to inference.
A concatenated row (``audio`` a list of parts, :mod:`asr.data.manifest`) is read part by part and
joined with its ``gap`` of silence (:func:`load_row_audio`), so the wave cache, which reads through
this dataset, holds the same samples. A missing or corrupt audio file is reported with its
utterance id and left out of the batch; :attr:`Batch.failed` carries it to the training loop,
which counts it for the end-of-run summary.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from asr.audio import SAMPLE_RATE, AudioError, load_audio
from asr.data.augment import speed_perturb
from asr.tokenizer import Tokenizer

__all__ = ["Batch", "AsrDataset", "collate", "load_row_audio"]


def load_row_audio(row: dict) -> torch.Tensor:
    """The audio of a manifest row as 16 kHz mono float32 (N,).

    A plain row is ``load_audio(audio, start, end)``. A concatenated row (``audio`` a list) is its
    parts in order, each cut by its ``start[i]`` / ``end[i]``, with ``round(gap * 16000)`` zero
    samples between consecutive parts.

    Raises:
        AudioError: a part is missing, unreadable or truncated (the message names the file).
    """
    audio = row["audio"]
    if isinstance(audio, str):
        return load_audio(audio, row.get("start"), row.get("end"))
    starts = row.get("start") or [None] * len(audio)
    ends = row.get("end") or [None] * len(audio)
    gap = torch.zeros(int(round((row.get("gap") or 0.0) * SAMPLE_RATE)))
    pieces: list[torch.Tensor] = []
    for k, (path, start, end) in enumerate(zip(audio, starts, ends)):
        if k and gap.numel():
            pieces.append(gap)
        pieces.append(load_audio(path, start, end))
    return torch.cat(pieces)


@dataclass
class Batch:
    """A padded batch. waves (B, N) float32, wave_lens (B,), tokens (B, U) padded with 0, token_lens (B,)."""

    ids: list[str]
    waves: torch.Tensor
    wave_lens: torch.Tensor
    tokens: torch.Tensor
    token_lens: torch.Tensor
    failed: list[tuple[str, str]]  # (utterance id, error) of items that could not be read

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.ids, self.waves.to(device), self.wave_lens.to(device), self.tokens.to(device),
                     self.token_lens.to(device), self.failed)


class AsrDataset(Dataset):
    """Manifest rows -> ``(id, wave, tokens)`` items, or ``(id, None, error)`` for unreadable audio.

    Args:
        rows: manifest rows (see :mod:`asr.data.manifest`).
        tokenizer: turns ``text`` into ids.
        speeds: speed-perturbation factors drawn uniformly per item (``(1.0,)`` = off).
        seed: seeds the per-item choice (item ``i`` in epoch ``e`` always gets the same factor).
    """

    def __init__(self, rows: list[dict], tokenizer: Tokenizer, speeds: tuple[float, ...] = (1.0,),
                 seed: int = 0):
        self.rows = rows
        self.tokenizer = tokenizer
        self.speeds = speeds
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def durations(self) -> list[float]:
        return [r["duration"] for r in self.rows]

    def speed(self, i: int, epoch: int | None = None) -> float:
        """The speed factor of item ``i`` in ``epoch`` (default: the current one): a pure function of
        (seed, epoch, i), so a resumed run and the feature cache draw the same factors."""
        if len(self.speeds) == 1:
            return self.speeds[0]
        epoch = self.epoch if epoch is None else epoch
        return random.Random(self.seed * 1_000_003 + epoch * 7919 + i).choice(self.speeds)

    def __getitem__(self, i: int):
        row = self.rows[i]
        try:
            wave = load_row_audio(row)
        except AudioError as e:
            return row["id"], None, str(e)
        wave = speed_perturb(wave, self.speed(i))
        return row["id"], wave, torch.tensor(self.tokenizer.encode(row["text"]), dtype=torch.long)


def collate(items: list) -> Batch:
    """Pad waves and tokens; unreadable items are reported to stderr and listed in ``Batch.failed``."""
    ok = [it for it in items if it[1] is not None]
    failed = [(it[0], it[2]) for it in items if it[1] is None]
    for utt, message in failed:
        print(f"error: {utt}: {message}", file=sys.stderr)
    ids = [it[0] for it in ok]
    wave_lens = torch.tensor([it[1].numel() for it in ok], dtype=torch.long)
    token_lens = torch.tensor([it[2].numel() for it in ok], dtype=torch.long)
    waves = torch.zeros(len(ok), int(wave_lens.max()) if ok else 0)
    tokens = torch.zeros(len(ok), int(token_lens.max()) if ok else 0, dtype=torch.long)
    for b, (_, w, t) in enumerate(ok):
        waves[b, : w.numel()] = w
        tokens[b, : t.numel()] = t
    return Batch(ids, waves, wave_lens, tokens, token_lens, failed)
