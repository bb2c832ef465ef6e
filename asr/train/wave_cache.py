"""Training waveforms held on the training device (``data.cache_waves``), augmented there.

The feature cache (:mod:`asr.train.feature_cache`) freezes every utterance's fbank, so nothing can
be done to the audio after it is built. This cache keeps the audio itself: every training utterance
read once, as int16 in one flat tensor on the device (10 h of 16 kHz audio = 1.15 GB). A batch is
gathered by indexing, speed-perturbed by resampling on the device (the same factor per (epoch,
utterance) as the waveform path, :meth:`AsrDataset.speed`), padded, and handed to the trainer,
which augments it (:func:`asr.data.wave_augment.augment_waves`) and computes fbank there.

Concatenated rows (long segments, :mod:`asr.data.manifest`) are read through the dataset like any
row, so the cache holds each as one stretch of samples. Reading batches are bounded by padded
seconds as well as by count: 64 rows of 300 s would make 1.2 GB float32 batches in every
loader worker's queue.
"""

from __future__ import annotations

import sys

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.audio import resample
from asr.data import AsrDataset, Batch, collate
from asr.data.sampler import pack_batches
from asr.train.feature_cache import _ByIndex

__all__ = ["WaveCache"]


class WaveCache:
    """Every utterance of ``dataset`` as int16 on ``device``; :meth:`batch` builds padded batches.

    Args:
        dataset: the training dataset (rows, tokenizer, speeds, seed).
        device: where the cache lives.
        sample_rate: of the audio (16 kHz).
        num_workers: processes reading audio while the cache is built.
        read_batch, read_seconds: rows per reading batch, and the bound on its padded seconds
            (longest row x rows; the default lets 64 rows of up to 30 s through, as before).
        pad_to: batch lengths are rounded up to a multiple of this many samples, so that the model
            sees few distinct shapes (kernel plans and caches are reused).
    """

    def __init__(self, dataset: AsrDataset, device: torch.device, sample_rate: int = 16000, num_workers: int = 2,
                 read_batch: int = 64, pad_to: int = 5120, progress: bool = True, read_seconds: float = 1920.0):
        self.dataset, self.device, self.sample_rate, self.pad_to = dataset, device, sample_rate, pad_to
        n = len(dataset)
        self.offsets = [0] * n
        self.lengths = [0] * n
        self.tokens: list[torch.Tensor | None] = [None] * n
        self.errors: dict[int, str] = {}
        chunks, total = [], 0
        plain = _ByIndex(AsrDataset(dataset.rows, dataset.tokenizer, (1.0,), seed=dataset.seed))
        batches = pack_batches(range(n), dataset.durations, read_seconds, read_batch)  # in order
        loader = DataLoader(plain, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                            prefetch_factor=4 if num_workers else None, generator=torch.Generator().manual_seed(0))
        bar = tqdm(total=n, desc="wave cache", unit="utt", disable=not progress)
        for batch in loader:
            for i, message in batch.failed:
                self.errors[int(i)] = message
            bar.update(len(batch.ids) + len(batch.failed))
            for b, (i, m, u) in enumerate(zip(batch.ids, batch.wave_lens.tolist(), batch.token_lens.tolist())):
                i = int(i)
                chunks.append((batch.waves[b, :m].clamp(-1, 1) * 32767).round().to(torch.int16))
                self.offsets[i], self.lengths[i] = total, m
                total += m
                self.tokens[i] = batch.tokens[b, :u].to(device)
        bar.close()
        self.audio = torch.cat(chunks).to(device) if chunks else torch.zeros(0, dtype=torch.int16, device=device)
        if self.errors:
            print(f"wave cache: {len(self.errors)} utterances could not be read and are left out", file=sys.stderr)

    @property
    def nbytes(self) -> int:
        return self.audio.numel() * self.audio.element_size()

    def batch(self, indices: list[int], epoch: int) -> Batch:
        """The padded batch of dataset ``indices``, each speed-perturbed with its factor for ``epoch``;
        waves (B, N) float32 in [-1, 1] on the device, in the order of ``indices``."""
        ok = [i for i in indices if i not in self.errors]
        failed = [(self.dataset.rows[i]["id"], self.errors[i]) for i in indices if i in self.errors]
        waves: list[torch.Tensor | None] = [None] * len(ok)
        by_speed: dict[float, list[int]] = {}
        for j, i in enumerate(ok):
            by_speed.setdefault(self.dataset.speed(i, epoch), []).append(j)
        for speed, js in by_speed.items():
            group = [self.audio[self.offsets[ok[j]]: self.offsets[ok[j]] + self.lengths[ok[j]]].float() / 32768
                     for j in js]
            if speed == 1.0:
                out = group
            else:  # one resampling call per speed factor over the group, padded
                orig = int(round(self.sample_rate * speed))
                padded = resample(pad_sequence(group, batch_first=True), orig, self.sample_rate)
                out = [padded[k, : -(-g.numel() * self.sample_rate // orig)] for k, g in enumerate(group)]
            for j, w in zip(js, out):
                waves[j] = w
        lens = torch.tensor([w.numel() for w in waves], dtype=torch.long, device=self.device)
        toks = [self.tokens[i] for i in ok]
        token_lens = torch.tensor([t.numel() for t in toks], dtype=torch.long, device=self.device)
        ids = [self.dataset.rows[i]["id"] for i in ok]
        if not ok:
            empty = torch.zeros(0, 0, device=self.device)
            return Batch([], empty, lens, empty.long(), token_lens, failed)
        x = pad_sequence(waves, batch_first=True)
        n = -(-x.shape[1] // self.pad_to) * self.pad_to
        x = torch.nn.functional.pad(x, (0, n - x.shape[1]))
        return Batch(ids, x, lens, pad_sequence(toks, batch_first=True), token_lens, failed)
