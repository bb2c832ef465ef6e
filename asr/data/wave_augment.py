"""Waveform augmentation of a padded batch, on the device the batch lives on (the training GPU).

Each utterance of the batch independently gets, with the probabilities of :class:`WaveAugmentConfig`:

1. random gain (uniform in dB);
2. room reverberation: convolution with a room impulse response drawn from a bank (generated
   offline, e.g. ``egs/default/local/make_rirs.py`` with pyroomacoustics), aligned on its direct
   path so that the labels' timing does not move;
3. additive noise at an SNR drawn uniformly in ``snr_db``: coloured noise (power spectrum
   ``1 / f^beta``, beta uniform in 0..2: white to brown) or babble (the sum of a few other
   utterances of the same batch);
4. a telephone channel: band-limited to 8 kHz sampling (300-3400 Hz speech band) and back, with
   8-bit mu-law quantisation.

Every FFT runs at a length from a small fixed set (:func:`fft_size`, 2^a 3^b), whatever the padded
batch length: cuFFT keeps one plan with its own work area per length, and with a new length for
almost every batch the plans grew until a training run on a shared H200 failed with
``CUFFT_INTERNAL_ERROR`` after 3,000 steps (lease 7, 2026-12-02, four runs on one GPU).

Padding stays zero. Random numbers come from one CUDA/CPU generator seeded from the caller's CPU
generator, so a run that saves that generator resumes with the same augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF

__all__ = ["WaveAugmentConfig", "augment_waves", "coloured_noise", "add_noise", "reverberate", "telephone",
           "fft_size", "fft_convolve"]


@dataclass(frozen=True)
class WaveAugmentConfig:
    """Probabilities are per utterance; ``rirs``: path of a ``.npy`` bank (R, L) float of impulse
    responses at 16 kHz (relative to the experiment YAML), None = no reverberation."""

    gain_prob: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)
    reverb_prob: float = 0.3
    rirs: str | None = None
    noise_prob: float = 0.4
    babble_share: float = 0.4       # of the noisy utterances, this share gets babble, the rest coloured noise
    babble_speakers: tuple[int, int] = (3, 6)
    snr_db: tuple[float, float] = (0.0, 30.0)
    telephone_prob: float = 0.1


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b >= n: a fast cuFFT/pocketfft length, from a set of few sizes (about 130
    below 2^20), so that the plans of earlier batches serve the next ones."""
    best, p3 = 1 << max(n - 1, 0).bit_length(), 3  # 2^a alone, then 2^a 3^b for b = 1, 2, ...
    while p3 < best:
        times_p3 = p3 << ((n - 1) // p3).bit_length() if n > p3 else p3  # the least 2^a p3 >= n
        best, p3 = min(best, times_p3), p3 * 3
    return best


def fft_convolve(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Full linear convolution of the rows of ``x`` (B, N) and ``y`` (B, L): (B, N + L - 1), through
    FFTs of length :func:`fft_size` (the zero padding beyond N + L - 1 leaves the result exact)."""
    n = x.shape[-1] + y.shape[-1] - 1
    m = fft_size(n)
    return torch.fft.irfft(torch.fft.rfft(x, n=m) * torch.fft.rfft(y, n=m), n=m)[..., :n]


def _uniform(lo: float, hi: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _valid(lens: torch.Tensor, n: int) -> torch.Tensor:
    return torch.arange(n, device=lens.device)[None, :] < lens[:, None]  # (B, N)


def coloured_noise(shape: tuple[int, int], beta: torch.Tensor, g: torch.Generator, device) -> torch.Tensor:
    """Gaussian noise (B, N) whose power spectrum falls as ``1 / f^beta`` (beta (B,)); unit variance."""
    B, N = shape
    M = fft_size(N)  # shaped at a fixed FFT length, then cut to N (see the module's docstring)
    white = torch.randn(B, M, generator=g, device=device)
    spec = torch.fft.rfft(white, dim=1)
    f = torch.arange(spec.shape[1], device=device).clamp(min=1).float()
    spec = spec * f[None, :].pow(-beta[:, None] / 2)
    noise = torch.fft.irfft(spec, n=M, dim=1)[:, :N]
    return noise / noise.std(dim=1, keepdim=True).clamp(min=1e-8)


def add_noise(waves: torch.Tensor, lens: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``waves + noise`` scaled to ``snr_db`` (B,) over each utterance's valid samples."""
    valid = _valid(lens, waves.shape[1]).float()
    n = lens.clamp(min=1).float()
    p_sig = (waves.pow(2) * valid).sum(1) / n
    p_noise = (noise.pow(2) * valid).sum(1) / n
    scale = torch.sqrt(p_sig / (p_noise.clamp(min=1e-10) * 10 ** (snr_db / 10)))
    return (waves + scale[:, None] * noise) * valid


def reverberate(waves: torch.Tensor, lens: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
    """Convolve each utterance (B, N) with its impulse response (B, L), aligned on the response's
    peak (the direct path), with the output power matched to the input's."""
    peak = rirs.abs().argmax(dim=1)  # (B,)
    wet = fft_convolve(waves, rirs)  # (B, N + L - 1)
    idx = torch.arange(waves.shape[1], device=waves.device)[None, :] + peak[:, None]
    wet = wet.gather(1, idx)
    valid = _valid(lens, waves.shape[1]).float()
    wet = wet * valid
    gain = torch.sqrt((waves.pow(2).sum(1)) / wet.pow(2).sum(1).clamp(min=1e-10))
    return wet * gain[:, None]


def telephone(waves: torch.Tensor, lens: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """An 8 kHz telephone channel and back: band-limited by the round trip, 8-bit mu-law in between."""
    narrow = AF.resample(waves, sample_rate, 8000)
    peak = narrow.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)
    q = AF.mu_law_decoding(AF.mu_law_encoding(narrow / peak, 256), 256) * peak
    back = AF.resample(q, 8000, sample_rate)[:, : waves.shape[1]]
    if back.shape[1] < waves.shape[1]:
        back = torch.nn.functional.pad(back, (0, waves.shape[1] - back.shape[1]))
    return back * _valid(lens, waves.shape[1]).float()


def _babble(waves: torch.Tensor, lens: torch.Tensor, rows: torch.Tensor, cfg: WaveAugmentConfig,
            g: torch.Generator) -> torch.Tensor:
    """For each of ``rows``: the sum of a few other utterances of the batch, tiled to its length."""
    B, N = waves.shape
    dev = waves.device
    lo, hi = cfg.babble_speakers
    out = torch.zeros(len(rows), N, device=dev)
    k = int(torch.randint(lo, hi + 1, (1,), generator=g, device=dev))
    for _ in range(k):
        other = torch.randint(0, B, (len(rows),), generator=g, device=dev)
        shift = torch.randint(0, N, (len(rows),), generator=g, device=dev)
        src_len = lens[other].clamp(min=1)
        pos = (torch.arange(N, device=dev)[None, :] + shift[:, None]) % src_len[:, None]  # tile the source
        piece = waves[other].gather(1, pos)
        out += piece / piece.std(dim=1, keepdim=True).clamp(min=1e-8)
    return out


def augment_waves(waves: torch.Tensor, lens: torch.Tensor, cfg: WaveAugmentConfig, generator: torch.Generator,
                  rirs: torch.Tensor | None = None, sample_rate: int = 16000) -> torch.Tensor:
    """Augment a padded batch in the order gain, reverberation, noise, telephone.

    Args:
        waves: (B, N) float, zero beyond ``lens``; lens: (B,) on the same device.
        generator: a CPU generator; one draw from it seeds the device generator of this call.
        rirs: (R, L) impulse responses on the device, or None (no reverberation).
    Returns: a new (B, N) tensor.
    """
    B, N = waves.shape
    dev = waves.device
    g = torch.Generator(dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    x = waves.float()
    lens = lens.to(dev)
    if cfg.gain_prob > 0:
        on = torch.rand(B, generator=g, device=dev) < cfg.gain_prob
        db = _uniform(*cfg.gain_db, B, g, dev)
        x = x * torch.where(on, 10 ** (db / 20), torch.ones_like(db))[:, None]
    if rirs is not None and cfg.reverb_prob > 0:
        rows = (torch.rand(B, generator=g, device=dev) < cfg.reverb_prob).nonzero().squeeze(1)
        if len(rows):
            pick = torch.randint(0, rirs.shape[0], (len(rows),), generator=g, device=dev)
            x[rows] = reverberate(x[rows], lens[rows], rirs[pick].float())
    if cfg.noise_prob > 0:
        noisy = torch.rand(B, generator=g, device=dev) < cfg.noise_prob
        babble = torch.rand(B, generator=g, device=dev) < cfg.babble_share
        snr = _uniform(*cfg.snr_db, B, g, dev)
        babble_rows = (noisy & babble).nonzero().squeeze(1)
        babble_noise = _babble(x, lens, babble_rows, cfg, g) if len(babble_rows) and B > 1 else None
        rows = (noisy & ~babble).nonzero().squeeze(1)
        if len(rows):
            beta = _uniform(0.0, 2.0, len(rows), g, dev)
            x[rows] = add_noise(x[rows], lens[rows], coloured_noise((len(rows), N), beta, g, dev), snr[rows])
        if babble_noise is not None:
            rows = babble_rows
            x[rows] = add_noise(x[rows], lens[rows], babble_noise, snr[rows])
    if cfg.telephone_prob > 0:
        rows = (torch.rand(B, generator=g, device=dev) < cfg.telephone_prob).nonzero().squeeze(1)
        if len(rows):
            x[rows] = telephone(x[rows], lens[rows], sample_rate)
    peak = x.abs().amax(dim=1, keepdim=True)
    return torch.where(peak > 1.0, x / peak, x)  # keep the int16 range of real recordings
