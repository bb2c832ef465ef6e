"""Training features computed once and held on the training device (``data.cache_features``).

A GPU trains a small conformer faster than data loader workers can read, speed-perturb and pad
audio (the H200 runs of ``egs/default`` with 2400 s batches kept the GPU ~25 % busy). The cache
reads every training utterance once, computes its fbank at every speed factor on the device,
keeps it there as float16 (egs/default's training data x 3 speeds: 21.2 GiB on the H200), and
then serves batches by indexing: no workers, no copies.

Batches are the same as the waveform path's: the same sampler order, the same speed factor per
(epoch, utterance) (:meth:`AsrDataset.speed`) and the same fbank, so exact resume still holds.
What differs: features are rounded to float16 (~1e-3 relative), and ``optim.dither`` does not
apply (the dither would be frozen into the cache).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from asr.audio import resample
from asr.data import AsrDataset, collate
from asr.features import Fbank

__all__ = ["FeatureBatch", "FeatureCache"]


@dataclass
class FeatureBatch:
    """A padded batch of cached features: feats (B, T, F) float32, feat_lens (B,), tokens (B, U), token_lens (B,)."""

    ids: list[str]
    feats: torch.Tensor
    feat_lens: torch.Tensor
    tokens: torch.Tensor
    token_lens: torch.Tensor
    failed: list[tuple[str, str]]

    def to(self, device: torch.device | str) -> "FeatureBatch":
        return self  # built on the training device already


class FeatureCache:
    """Fbank of every utterance of ``dataset`` at each of its speed factors, on ``fbank``'s device.

    Args:
        dataset: the training dataset (rows, tokenizer, speeds, seed); its speeds are used here.
        fbank: the trainer's :class:`Fbank` (its device is where the cache lives).
        num_workers: processes reading audio while the cache is built.
        read_batch: utterances per fbank call while building.
        progress: show a progress bar.
    """

    def __init__(self, dataset: AsrDataset, fbank: Fbank, num_workers: int = 2, read_batch: int = 64,
                 progress: bool = True):
        self.dataset = dataset
        self.device = fbank.window.device
        self.speeds = tuple(dataset.speeds)
        self.feats: dict[float, list[torch.Tensor | None]] = {s: [None] * len(dataset) for s in self.speeds}
        self.tokens: list[torch.Tensor | None] = [None] * len(dataset)
        self.errors: dict[int, str] = {}
        plain = _ByIndex(AsrDataset(dataset.rows, dataset.tokenizer, (1.0,), seed=dataset.seed))
        loader = DataLoader(plain, batch_size=read_batch, collate_fn=collate, num_workers=num_workers,
                            prefetch_factor=4 if num_workers else None,
                            generator=torch.Generator().manual_seed(0))  # leave the global RNG alone (resume)
        sample_rate = fbank.cfg.sample_rate
        with torch.no_grad():
            bar = tqdm(total=len(dataset), desc="feature cache", unit="utt", disable=not progress)
            for batch in loader:
                for i, message in batch.failed:
                    self.errors[int(i)] = message
                bar.update(len(batch.ids) + len(batch.failed))
                if not batch.ids:
                    continue
                rows = [int(i) for i in batch.ids]
                waves, lens = batch.waves.to(self.device), batch.wave_lens.to(self.device)
                for speed in self.speeds:
                    w, n = waves, lens
                    if speed != 1.0:
                        orig = int(round(sample_rate * speed))
                        w = resample(waves, orig, sample_rate)
                        n = torch.div(lens * sample_rate + orig - 1, orig, rounding_mode="floor")  # ceil
                    feats, feat_lens = fbank(w, n)
                    for b, (i, t) in enumerate(zip(rows, feat_lens.tolist())):  # one device sync per batch
                        self.feats[speed][i] = feats[b, :t].to(torch.float16).clone()
                for b, (i, u) in enumerate(zip(rows, batch.token_lens.tolist())):
                    self.tokens[i] = batch.tokens[b, :u].to(self.device)
            bar.close()
        if self.errors:
            print(f"feature cache: {len(self.errors)} utterances could not be read and are left out",
                  file=sys.stderr)

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for per in self.feats.values() for f in per if f is not None)

    def batch(self, indices: list[int], epoch: int) -> FeatureBatch:
        """The padded batch of dataset ``indices`` with each item's speed factor for ``epoch``."""
        ok = [i for i in indices if i not in self.errors]
        failed = [(self.dataset.rows[i]["id"], self.errors[i]) for i in indices if i in self.errors]
        feats = [self.feats[self.dataset.speed(i, epoch)][i] for i in ok]
        toks = [self.tokens[i] for i in ok]
        feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long, device=self.device)
        token_lens = torch.tensor([t.numel() for t in toks], dtype=torch.long, device=self.device)
        if not ok:
            empty = torch.zeros(0, 0, device=self.device)
            return FeatureBatch([], empty[..., None], feat_lens, empty.long(), token_lens, failed)
        x = pad_sequence(feats, batch_first=True).float()
        y = pad_sequence(toks, batch_first=True)
        return FeatureBatch([self.dataset.rows[i]["id"] for i in ok], x, feat_lens, y, token_lens, failed)


class _ByIndex(Dataset):
    """A dataset whose items carry their index (as a string) in place of the utterance id:
    manifests merged from several corpora may repeat ids."""

    def __init__(self, dataset: AsrDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (str(i),) + tuple(self.dataset[i][1:])
