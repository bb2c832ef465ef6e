import random

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from asr.features import CmvnAccumulator, Fbank, FbankConfig, GlobalCMVN, OnlineFbank, num_frames


@pytest.fixture(scope="module")
def wave():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(37123) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 2 * t)
            + 0.02 * torch.randn(t.numel(), generator=g))


def test_matches_kaldi(wave):
    feats, lens = Fbank(FbankConfig())(wave[None], torch.tensor([wave.numel()]))
    ref = kaldi.fbank(wave[None] * 32768, num_mel_bins=80, dither=0.0, energy_floor=0.0)
    assert feats.shape[1] == ref.shape[0] == int(lens[0]) == num_frames(wave.numel(), FbankConfig())
    assert (feats[0] - ref).abs().max() < 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_online_equals_offline(wave, seed):
    cfg = FbankConfig()
    offline, _ = Fbank(cfg)(wave[None], torch.tensor([wave.numel()]))
    online = OnlineFbank(cfg)
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < wave.numel():
        n = rng.choice([1, 7, 160, 399, 400, 401, rng.randint(1, 5000)])
        chunks.append(online.accept(wave[i:i + n]))
        i += n
    got = torch.cat(chunks)
    assert got.shape == offline[0].shape
    assert (got - offline[0]).abs().max() <= 1e-3


def test_batch_padding(wave):
    fb = Fbank(FbankConfig())
    short = wave[:20000]
    batch = torch.zeros(2, wave.numel())
    batch[0], batch[1, :20000] = wave, short
    feats, lens = fb(batch, torch.tensor([wave.numel(), 20000]))
    alone, _ = fb(short[None], torch.tensor([20000]))
    n = int(lens[1])
    assert torch.allclose(feats[1, :n], alone[0], atol=1e-4)
    assert feats[1, n:].abs().max() == 0


def test_cmvn(wave, tmp_path):
    feats, _ = Fbank(FbankConfig())(wave[None], torch.tensor([wave.numel()]))
    acc = CmvnAccumulator()
    acc.add(feats[0])
    cmvn = acc.result()
    out = cmvn(feats[0])
    assert out.mean(0).abs().max() < 1e-3
    assert ((out.std(0, unbiased=False) - 1).abs() < 1e-2).all()
    cmvn.save(tmp_path / "cmvn.json")
    assert torch.equal(GlobalCMVN.load(tmp_path / "cmvn.json")(feats[0]), out)
