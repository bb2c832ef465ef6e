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


SILENCE_LEVEL = 0.003  # amplitude of the faint noise used as "silence" in tests

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


@pytest.fixture(scope="session")
def tiny_model_dir(tts_corpus, tmp_path_factory):
    """A tiny SAR + attention-decoder model overfitted on the TTS utterances and exported as a model
    directory: every decoder can run on it and should reproduce the training transcripts."""
    import dataclasses

    from asr.data import AsrDataset, collate, read_manifest
    from asr.encoder import EncoderConfig
    from asr.features import CmvnAccumulator, Fbank, FbankConfig
    from asr.models import DecoderConfig, LMConfig, ModelConfig, SARConfig, build_model
    from asr.models.io import export_model_dir
    from asr.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_model")
    rows = read_manifest(tts_corpus / "all.jsonl")
    tok = train_tokenizer([r["text"] for r in rows] * 5, out / "tok", vocab_size=48)
    items = [AsrDataset(rows, tok)[i] for i in range(len(rows))]
    # each utterance also appears between stretches of silence, faint noise before and digital
    # zeros then noise after, and pairs of utterances with noise between them, so that the model
    # learns blank on both kinds of silence and speech after silence (the endpointing tests rely on
    # it; the end-of-stream flush appends zeros, streaming.recognizer.flush_pad). Without the
    # zeros the model, which saw no more than espeak's own 0.4 s of them, emitted junk tokens on
    # longer digital silence. (These items stay shorter than the pairs: no longer batch.)
    noise = torch.Generator().manual_seed(1)

    def quiet(seconds: float) -> torch.Tensor:
        return SILENCE_LEVEL * torch.randn(int(16000 * seconds), generator=noise)

    padded = [(utt + "-pad", torch.cat([quiet(0.2), wave, torch.zeros(int(16000 * 1.2)), quiet(1.0)]), ids)
              for utt, wave, ids in items]
    pairs = [(f"{a[0]}+{b[0]}", torch.cat([a[1], quiet(1.2), b[1]]), torch.cat([a[2], b[2]]))
             for a, b in zip(items[0::2], items[1::2])]
    b = collate(items + padded + pairs)
    fb = FbankConfig()
    feats, feat_lens = Fbank(fb)(b.waves, b.wave_lens)
    acc = CmvnAccumulator()
    for f, n in zip(feats, feat_lens):
        acc.add(f[:n])
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=0.0, train_block_sizes=(None, 4, 8),
                              train_left_blocks=(None, 2))
    cfg = ModelConfig(vocab_size=tok.vocab_size, kind="sar", encoder=enc,
                      decoder=DecoderConfig(d_model=64, n_layers=1, dropout=0.0, label_smoothing=0.0),
                      sar=SARConfig(lm=LMConfig(d_model=64, n_layers=1, dropout=0.0), fusion_layers=1, dropout=0.0))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.cmvn.load_state_dict(acc.result().state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = 450
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        block_size, left_blocks = model.encoder.sample_block_config(gen)
        losses = model(feats, feat_lens, b.tokens, b.token_lens, block_size, left_blocks)
        opt.zero_grad()
        losses.total.backward()
        opt.step()
        schedule.step()
    return export_model_dir(model.state_dict(), cfg, fb, tok.path, out / "model",
                            provenance={"note": "test fixture"})


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    """The tiny model, loaded once per test module (a module may move it to another dtype)."""
    from asr.models.io import load_model_dir

    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def rows(tts_corpus):
    """The tiny TTS corpus's manifest rows."""
    from asr.data import read_manifest

    return read_manifest(tts_corpus / "all.jsonl")
