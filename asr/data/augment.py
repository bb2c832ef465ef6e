"""Data augmentation: SpecAugment on feature batches and speed perturbation of waveforms."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.audio import resample

__all__ = ["SpecAugmentConfig", "spec_augment", "speed_perturb"]


@dataclass(frozen=True)
class SpecAugmentConfig:
    num_freq_masks: int = 2
    max_freq_width: int = 27
    num_time_masks: int = 2
    max_time_ratio: float = 0.05  # each time mask covers at most this fraction of the utterance
    max_time_width: int = 40


def spec_augment(feats: torch.Tensor, feat_lens: torch.Tensor, cfg: SpecAugmentConfig,
                 generator: torch.Generator | None = None, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Replace random frequency bands and time spans with ``fill`` (pass the CMVN mean for raw
    fbank, so that the masked values normalise to zero).

    Args:
        feats: (B, T, F); feat_lens: (B,); fill: scalar or (F,). Returns a new (B, T, F) tensor.
    """
    B, T, F = feats.shape
    dev = feats.device
    freq = torch.arange(F, device=dev)[None, :]
    time = torch.arange(T, device=dev)[None, :]
    g = generator

    def rand(n: int) -> torch.Tensor:
        return torch.rand(n, generator=g).to(dev)

    keep = torch.ones(B, T, F, dtype=torch.bool, device=dev)
    for _ in range(cfg.num_freq_masks):
        width = (rand(B) * (cfg.max_freq_width + 1)).long()
        start = (rand(B) * (F - width).clamp(min=1)).long()
        band = (freq >= start[:, None]) & (freq < (start + width)[:, None])  # (B, F)
        keep &= ~band[:, None, :]
    lens = feat_lens.to(dev)
    for _ in range(cfg.num_time_masks):
        limit = torch.minimum((lens * cfg.max_time_ratio).long(), torch.tensor(cfg.max_time_width, device=dev))
        width = (rand(B) * (limit + 1)).long()
        start = (rand(B) * (lens - width).clamp(min=1)).long()
        span = (time >= start[:, None]) & (time < (start + width)[:, None])  # (B, T)
        keep &= ~span[:, :, None]
    return torch.where(keep, feats, torch.as_tensor(fill, dtype=feats.dtype, device=dev))


def speed_perturb(wave: torch.Tensor, factor: float, sample_rate: int = 16000) -> torch.Tensor:
    """Play ``wave`` (N,) ``factor`` times faster (changes tempo and pitch, like Kaldi's sox speed)."""
    if factor == 1.0:
        return wave
    return resample(wave, int(round(sample_rate * factor)), sample_rate)
