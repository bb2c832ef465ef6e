"""Kaldi-compatible log-mel filterbank features, offline (batched) and online (any chunk size).

Both paths run the same per-frame computation (:func:`_frames_to_fbank`), so the online frames equal
the offline frames. Numbers follow Kaldi's ``compute-fbank-feats`` (and
``torchaudio.compliance.kaldi.fbank``) with ``dither=0``: samples are scaled to the int16 range,
25 ms Povey-windowed frames every 10 ms with ``snip_edges=True``, DC offset removed, pre-emphasis
0.97, 512-point power spectrum, 80 triangular mel bins from 20 Hz to Nyquist, natural log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from torchaudio.compliance.kaldi import get_mel_banks

__all__ = ["FbankConfig", "Fbank", "OnlineFbank", "GlobalCMVN", "num_frames", "CmvnAccumulator"]


@dataclass(frozen=True)
class FbankConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    low_freq: float = 20.0
    preemphasis: float = 0.97
    dither: float = 0.0  # training-time dither amplitude (int16 units); 0 at inference

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_size - 1).bit_length()


def num_frames(num_samples: torch.Tensor | np.ndarray | int, cfg: FbankConfig) -> torch.Tensor | np.ndarray | int:
    """Frames of ``num_samples`` samples with ``snip_edges=True``: ``1 + (n - win) // shift`` or 0.

    >>> num_frames(16000, FbankConfig())
    98
    """
    if isinstance(num_samples, int):
        return 0 if num_samples < cfg.window_size else 1 + (num_samples - cfg.window_size) // cfg.window_shift
    if isinstance(num_samples, np.ndarray):
        return np.maximum((num_samples - cfg.window_size) // cfg.window_shift + 1, 0)
    n = (num_samples - cfg.window_size).div(cfg.window_shift, rounding_mode="floor") + 1
    return n.clamp(min=0)


_FLOOR = torch.finfo(torch.float32).eps  # mel energy floor before the log


class _FbankCore(nn.Module):
    """Window and mel matrix, shared by the offline and online paths."""

    def __init__(self, cfg: FbankConfig):
        super().__init__()
        self.cfg = cfg
        window = torch.hann_window(cfg.window_size, periodic=False, dtype=torch.float64).pow(0.85)
        banks, _ = get_mel_banks(cfg.num_mel_bins, cfg.fft_size, float(cfg.sample_rate),
                                 cfg.low_freq, 0.0, 100.0, -500.0, 1.0)
        banks = torch.nn.functional.pad(banks, (0, 1))  # (M, fft/2 + 1)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel", banks.T.contiguous().float(), persistent=False)

    def _frames_to_fbank(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., win) int16-scaled samples -> (..., num_mel_bins) log-mel energies."""
        cfg = self.cfg
        frames = frames - frames.mean(dim=-1, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - cfg.preemphasis * prev) * self.window
        spec = torch.fft.rfft(frames, n=cfg.fft_size).abs().pow(2)
        mel = spec @ self.mel
        # the floor is float32's epsilon in every dtype (as Kaldi and torchaudio.compliance.kaldi):
        # with the dtype's own epsilon, digital silence (exact zeros: the end-of-stream flush, TTS
        # pauses) gave log-mels of -36 in float64 against -15.9 in float32, and other text
        return mel.clamp(min=_FLOOR).log()


class Fbank(_FbankCore):
    """Offline batched fbank (CPU or GPU).

    Args:
        wave: (B, N) float32 audio in [-1, 1], zero padded.
        wave_lens: (B,) number of valid samples.
        dither: Gaussian dither amplitude in int16 units (training only; default none).
    Returns:
        feats (B, T, num_mel_bins), feat_lens (B,); frames beyond ``feat_lens`` are zero.
    """

    def forward(self, wave: torch.Tensor, wave_lens: torch.Tensor, dither: float = 0.0):
        cfg = self.cfg
        x = wave * 32768.0
        if dither > 0:
            x = x + dither * torch.randn_like(x)
        feat_lens = num_frames(wave_lens, cfg)
        if x.shape[1] < cfg.window_size:
            return x.new_zeros(x.shape[0], 0, cfg.num_mel_bins), feat_lens
        frames = x.unfold(1, cfg.window_size, cfg.window_shift)  # (B, T, win)
        feats = self._frames_to_fbank(frames)
        valid = torch.arange(feats.shape[1], device=x.device)[None, :] < feat_lens[:, None]
        return feats * valid[..., None], feat_lens


class OnlineFbank(_FbankCore):
    """Streaming fbank: :meth:`accept` any number of samples, get the frames that became complete.

    >>> fb = OnlineFbank(FbankConfig())
    >>> fb.accept(torch.zeros(300)).shape, fb.accept(torch.zeros(260)).shape
    (torch.Size([0, 80]), torch.Size([2, 80]))
    """

    def __init__(self, cfg: FbankConfig):
        super().__init__(cfg)
        # The samples not yet framed (less than one window) stay on the host, where audio arrives:
        # accept_many sends them to the module's device with every stream's new samples in one copy.
        self.pending = np.zeros(0, np.float32)

    def reset(self) -> None:
        self.pending = self.pending[:0]

    @torch.no_grad()
    def accept(self, samples: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(n,) audio in [-1, 1] -> (t, num_mel_bins) new frames, on the module's device and dtype."""
        return OnlineFbank.accept_many([self], [samples])[0]

    @staticmethod
    @torch.no_grad()
    def accept_many(fbanks: Sequence["OnlineFbank"], samples: Sequence[torch.Tensor | np.ndarray]) -> list[torch.Tensor]:
        """:meth:`accept` for several streams at once (fbanks of one config, device and dtype, e.g.
        a server pass). The framing is host arithmetic; the device gets one copy of the samples and
        one of the frame starts, gathers every stream's frames at once and runs one fbank over them.
        Each result equals that stream's own ``accept``."""
        first = fbanks[0]
        cfg, window = first.cfg, first.window
        if any((fb.cfg is not cfg and fb.cfg != cfg) or fb.window.device != window.device
               or fb.window.dtype != window.dtype for fb in fbanks):  # (streams of one model share one cfg)
            raise ValueError("OnlineFbank.accept_many: the fbanks differ in config, device or dtype")
        host = np.float64 if window.dtype == torch.float64 else np.float32  # the samples' precision on the device
        pieces = []  # every stream's pending samples, then its new ones: one host buffer for all
        for fb, x in zip(fbanks, samples):
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            pieces += (fb.pending, x.ravel())
        flat = np.concatenate(pieces).astype(host, copy=False)
        sizes = np.fromiter((p.size for p in pieces), np.int64, len(pieces))
        lens = sizes[0::2] + sizes[1::2]  # samples per stream
        ends = np.cumsum(lens)
        offsets = ends - lens
        counts_np = num_frames(lens, cfg)
        counts = counts_np.tolist()
        used = offsets + counts_np * cfg.window_shift  # each stream's first sample not framed
        for fb, a, b in zip(fbanks, used.tolist(), ends.tolist()):
            # a copy (< one window), not a view that keeps the whole pass's buffer; and not through
            # Module.__setattr__, which a server pass would run once per stream
            fb.__dict__["pending"] = flat[a:b].copy()
        total = int(counts_np.sum())
        if not total:
            return [window.new_zeros(0, cfg.num_mel_bins) for _ in fbanks]
        # frame k of stream i starts at offsets[i] + k * shift
        base = np.repeat(offsets - (np.cumsum(counts_np) - counts_np) * cfg.window_shift, counts_np)
        start = torch.from_numpy(base + cfg.window_shift * np.arange(total)).to(window.device)
        flat = torch.from_numpy(flat).to(window.device)
        frames = flat[start[:, None] + torch.arange(cfg.window_size, device=window.device)]  # (sum t_i, win)
        return list(first._frames_to_fbank(frames.to(window.dtype) * 32768.0).split(counts))


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation with statistics stored in the model.

    Args:
        mean: (D,) feature mean. istd: (D,) inverse standard deviation.
    """

    def __init__(self, mean: torch.Tensor, istd: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("istd", istd.float().clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) * self.istd

    @classmethod
    def identity(cls, dim: int = 80) -> "GlobalCMVN":
        return cls(torch.zeros(dim), torch.ones(dim))

    @classmethod
    def load(cls, path: str | Path) -> "GlobalCMVN":
        stats = json.loads(Path(path).read_text())
        return cls(torch.tensor(stats["mean"]), torch.tensor(stats["istd"]))

    def save(self, path: str | Path, frames: int = 0) -> None:
        Path(path).write_text(json.dumps({"frames": frames, "mean": self.mean.tolist(),
                                          "istd": self.istd.tolist()}))


class CmvnAccumulator:
    """Accumulates float64 sums of feature frames; :meth:`result` gives a :class:`GlobalCMVN`."""

    def __init__(self, dim: int = 80):
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.sumsq = torch.zeros(dim, dtype=torch.float64)
        self.frames = 0

    def add(self, feats: torch.Tensor) -> None:
        """feats: (T, D) frames of one utterance."""
        f = feats.double()
        self.sum += f.sum(0)
        self.sumsq += f.pow(2).sum(0)
        self.frames += f.shape[0]

    def result(self, floor: float = 1e-10) -> GlobalCMVN:
        if self.frames == 0:
            raise ValueError("no feature frames to estimate CMVN from")
        mean = self.sum / self.frames
        var = (self.sumsq / self.frames - mean.pow(2)).clamp(min=floor)
        return GlobalCMVN(mean.float(), var.rsqrt().float())
