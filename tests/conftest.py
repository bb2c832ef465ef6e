import numpy as np
import pytest
import soundfile as sf
import torch

torch.set_num_threads(1)


def _speechlike(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Deterministic noise-modulated harmonics: enough spectral structure for feature tests."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def speechlike():
    return _speechlike


@pytest.fixture
def kaldi_dir(tmp_path):
    """A tiny Kaldi data dir with audio in three formats, paths relative to the corpus folder."""
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    data = corpus / "train"
    data.mkdir()
    specs = [("u1", "wav", 16000, "HELLO WORLD"), ("u2", "flac", 22050, "GOOD MORNING"),
             ("u3", "ogg", 48000, "SEE YOU SOON")]
    with open(data / "wav.scp", "w") as scp, open(data / "text", "w") as text, \
            open(data / "utt2spk", "w") as u2s:
        for i, (utt, fmt, sr, words) in enumerate(specs):
            path = corpus / "audio" / f"{utt}.{fmt}"
            sf.write(path, _speechlike(1.0 + i * 0.5, sr, i), sr,
                     subtype="VORBIS" if fmt == "ogg" else None)
            scp.write(f"{utt} audio/{utt}.{fmt}\n")
            text.write(f"{utt} {words}\n")
            u2s.write(f"{utt} spk{i % 2}\n")
    return data


TTS_SENTENCES = ["HELLO WORLD", "GOOD MORNING TO YOU", "THE CAT SAT ON THE MAT", "SEVEN EIGHT NINE",
                 "OPEN THE DOOR PLEASE", "WHERE IS MY BOOK"]


@pytest.fixture(scope="session")
def tts_corpus(tmp_path_factory):
    """A few espeak-ng utterances (16 kHz wav) and their manifest: real speech-like input for
    end-to-end tests. Needs the Debian package espeak-ng (installed by install.sh)."""
    import json
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: run ./install.sh (it installs the Debian TTS packages)")
    from asr.audio import audio_duration

    root = tmp_path_factory.mktemp("tts")
    rows = []
    for i, text in enumerate(TTS_SENTENCES):
        path = root / f"utt{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text.lower()], check=True)
        rows.append({"id": f"utt{i}", "audio": str(path), "text": text, "speaker": "espeak",
                     "duration": audio_duration(path), "start": None, "end": None})
    with open(root / "all.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root
