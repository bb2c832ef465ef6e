"""Waveform augmentation on the training device, and the waveform cache it works on."""

import dataclasses

import numpy as np
import pytest
import torch

import torchaudio.functional as AF

from asr.data.wave_augment import (WaveAugmentConfig, add_noise, augment_waves, coloured_noise, fft_convolve,
                                   fft_size, reverberate, telephone)


def _batch(lens=(16000, 12000, 8000), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(lens)
    t = torch.arange(n) / 16000
    waves = torch.zeros(len(lens), n)
    for b, m in enumerate(lens):  # a harmonic tone with a little noise, as a stand-in for speech
        waves[b, :m] = 0.3 * torch.sin(2 * torch.pi * (150 + 50 * b) * t[:m]) + 0.01 * torch.randn(m, generator=g)
    return waves, torch.tensor(lens)


def test_noise_hits_the_requested_snr():
    waves, lens = _batch()
    waves, lens = waves.double(), lens
    g = torch.Generator().manual_seed(1)
    noise = coloured_noise((3, waves.shape[1]), torch.tensor([0.0, 1.0, 2.0]), g, "cpu").double()
    snr = torch.tensor([0.0, 10.0, 25.0], dtype=torch.float64)
    noisy = add_noise(waves, lens, noise, snr)
    for b, m in enumerate(lens.tolist()):
        sig, res = waves[b, :m], noisy[b, :m] - waves[b, :m]
        measured = 10 * torch.log10(sig.pow(2).mean() / res.pow(2).mean())
        assert float(measured) == pytest.approx(float(snr[b]), abs=1e-6)
        assert torch.all(noisy[b, m:] == 0)  # padding stays silent


def test_coloured_noise_slope():
    g = torch.Generator().manual_seed(2)
    x = coloured_noise((2, 64000), torch.tensor([0.0, 2.0]), g, "cpu")
    spec = torch.fft.rfft(x, dim=1).abs().pow(2)
    low, high = spec[:, 100:400].mean(1), spec[:, 10000:20000].mean(1)
    assert float(low[0] / high[0]) == pytest.approx(1.0, rel=0.3)  # white
    assert float(low[1] / high[1]) > 100  # brown: power falls as 1/f^2


def test_fft_size_is_the_least_smooth_length():
    smooth = sorted(2**a * 3**b for a in range(30) for b in range(20))
    for n in list(range(1, 3000)) + [320799, 1_000_001]:
        assert fft_size(n) == next(m for m in smooth if m >= n)


def test_fft_convolve_equals_the_direct_convolution():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 1237, generator=g, dtype=torch.float64), torch.randn(3, 301, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fft_convolve(x, y), AF.convolve(x, y), atol=1e-10, rtol=0)
    assert fft_convolve(x, y).shape == (3, 1237 + 301 - 1)


def test_reverberation_with_a_delayed_impulse_is_the_identity():
    waves, lens = _batch()
    rir = torch.zeros(3, 800)
    rir[:, 37] = 0.5  # direct path 37 samples late, half as loud
    out = reverberate(waves.double(), lens, rir.double())
    torch.testing.assert_close(out, waves.double(), atol=1e-9, rtol=0)


def test_telephone_band_limits_to_4khz():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 32000, generator=g) * 0.1
    y = telephone(x, torch.tensor([32000]))
    spec_x, spec_y = torch.fft.rfft(x[0]).abs().pow(2), torch.fft.rfft(y[0]).abs().pow(2)
    band = lambda s, lo, hi: float(s[int(lo * 2):int(hi * 2)].sum())  # 0.5 Hz per bin
    # above the 8 kHz channel's band: down by > 20 dB (torchaudio's windowed-sinc resampler, and the
    # mu-law quantisation noise it lets through, measured at -27 dB)
    assert band(spec_y, 4300, 8000) < 1e-2 * band(spec_x, 4300, 8000)
    assert band(spec_y, 500, 3000) > 0.5 * band(spec_x, 500, 3000)


def test_augment_is_deterministic_keeps_padding_and_range():
    waves, lens = _batch()
    rirs = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 400)).astype(np.float32)) * \
        torch.exp(-torch.arange(400) / 80.0)
    cfg = WaveAugmentConfig(gain_prob=1.0, reverb_prob=1.0, noise_prob=1.0, babble_share=0.5, telephone_prob=0.5)
    a = augment_waves(waves, lens, cfg, torch.Generator().manual_seed(5), rirs)
    b = augment_waves(waves, lens, cfg, torch.Generator().manual_seed(5), rirs)
    c = augment_waves(waves, lens, cfg, torch.Generator().manual_seed(6), rirs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == waves.shape and float(a.abs().max()) <= 1.0
    for i, m in enumerate(lens.tolist()):
        assert torch.all(a[i, m:] == 0)
    off = dataclasses.replace(cfg, gain_prob=0, reverb_prob=0, noise_prob=0, telephone_prob=0)
    assert torch.equal(augment_waves(waves, lens, off, torch.Generator(), rirs), waves)
