import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioError, StreamResampler, load_audio, resample, stream_audio


@pytest.mark.parametrize("fmt,subtype,sr,channels", [
    ("wav", "PCM_16", 16000, 1), ("wav", "FLOAT", 44100, 2), ("flac", None, 8000, 1),
    ("ogg", "VORBIS", 48000, 2), ("ogg", "OPUS", 48000, 1), ("nist", "PCM_16", 16000, 1),
])
def test_formats_rates_channels(tmp_path, speechlike, fmt, subtype, sr, channels):
    x = speechlike(1.0, sr, 0)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path = tmp_path / f"a.{'sph' if fmt == 'nist' else fmt}"
    sf.write(path, data, sr, subtype=subtype, format=fmt.upper())
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(wave.numel() - 16000) <= 16 + (312 if subtype == "OPUS" else 0)
    assert wave.abs().max() > 0.05


def test_segment(tmp_path, speechlike):
    sf.write(tmp_path / "a.wav", speechlike(2.0, 16000, 0), 16000)
    full = load_audio(tmp_path / "a.wav")
    seg = load_audio(tmp_path / "a.wav", start=0.5, end=1.25)
    assert torch.equal(seg, full[8000:20000])


def test_missing_and_corrupt_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="nothere.wav: no such audio file"):
        load_audio(tmp_path / "nothere.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF1234WAVEjunkjunk")
    with pytest.raises(AudioError, match="bad.wav: cannot read audio"):
        load_audio(bad)


def test_truncated_wav(tmp_path, speechlike):
    sf.write(tmp_path / "a.wav", speechlike(1.0, 16000, 0), 16000)
    raw = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(raw[: len(raw) // 2])
    # a WAV header still claims the full length: the short read is an error, not silent padding
    with pytest.raises(AudioError, match="t.wav"):
        load_audio(tmp_path / "t.wav")


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 22050, 44100, 48000])
def test_stream_resampler_equals_whole_signal(speechlike, sr):
    """Any chunking gives the samples of one resampling of the whole stream (float rounding)."""
    x = speechlike(2.0, sr, 1)[: 2 * sr + 77].astype(np.float32)
    whole = resample(torch.from_numpy(x), sr).numpy()
    rng = np.random.default_rng(sr)
    r, pieces, i = StreamResampler(sr), [], 0
    while i < x.size:
        n = int(rng.integers(1, 4000))
        pieces.append(r.accept(x[i:i + n]))
        i += n
    pieces.append(r.flush())
    out = np.concatenate(pieces)
    assert out.shape == whole.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, whole, atol=2e-6)
    assert StreamResampler(sr).flush().size == 0


@pytest.mark.parametrize("sr", [8000, 44100])
def test_stream_audio_equals_load_audio(tmp_path, speechlike, sr):
    sf.write(tmp_path / "a.wav", np.stack([speechlike(3.0, sr, 2)] * 2, axis=1), sr, subtype="FLOAT")
    chunks = list(stream_audio(tmp_path / "a.wav", chunk_seconds=0.7))
    assert len(chunks) > 3
    torch.testing.assert_close(torch.cat(chunks), load_audio(tmp_path / "a.wav"), atol=2e-6, rtol=0)
