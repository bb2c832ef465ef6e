"""Data intake at scale: a Kaldi dir of 200 utterances with a few bad files is prepared and trained
on; every bad file is named and counted exactly once and the run completes."""

import re

import numpy as np
import soundfile as sf
import yaml

from asr.data import kaldi_to_manifest, read_manifest, write_manifest
from asr.tokenizer import train_tokenizer
from asr.train import Trainer, load_experiment

_WORDS = "yes no up down left right on off stop go".split()


def _corpus(root, n=200):
    """``n`` short noise-burst utterances; six of them bad in six different ways."""
    rng = np.random.default_rng(0)
    audio, data = root / "audio", root / "data"
    audio.mkdir(parents=True)
    data.mkdir()
    scp, text = [], []
    for i in range(n):
        utt, path = f"u{i:03d}", audio / f"u{i:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000)
        scp.append(f"{utt} {path}")
        text.append(f"{utt} {' '.join(rng.choice(_WORDS, 2))}")
    bad = {"u010": "truncated", "u050": "zero-length", "u090": "text", "u130": "nan", "u170": "empty",
           "u190": "long"}
    (audio / "u010.wav").write_bytes((audio / "u010.wav").read_bytes()[:3000])
    (audio / "u050.wav").write_bytes(b"")
    (audio / "u090.wav").write_text("this is not audio\n")
    nan = (0.1 * rng.standard_normal(4000)).astype(np.float32)
    nan[100] = np.nan
    sf.write(audio / "u130.wav", nan, 16000, subtype="FLOAT")
    sf.write(audio / "u170.wav", np.zeros(0, np.float32), 16000)
    sf.write(audio / "u190.wav", np.zeros(7200, np.float32), 1)  # 2 h at 1 Hz: 14 kB on disk
    (data / "wav.scp").write_text("\n".join(scp) + "\n")
    (data / "text").write_text("\n".join(text) + "\n")
    return data, bad


def test_bad_files_are_named_once_and_training_completes(tmp_path, capsys):
    data, bad = _corpus(tmp_path)
    report = kaldi_to_manifest(data, tmp_path / "train.jsonl", workers=2, progress=False)
    prep_err = capsys.readouterr().err
    # prepare: the four unreadable files and the 0 s one are reported, each once, by id and path
    assert sorted(u for u, _ in report.errors) == ["u010", "u050", "u090", "u170"]
    for utt in ("u010", "u050", "u090", "u170"):
        assert len(re.findall(rf"^error: {utt}: .*{utt}\.wav", prep_err, re.M)) == 1, utt
    assert "truncated" in dict(report.errors)["u010"]
    assert "0 s long" in dict(report.errors)["u170"]
    rows = read_manifest(tmp_path / "train.jsonl")
    assert len(rows) == 196
    assert [r["duration"] for r in rows if r["id"] == "u190"] == [7200.0]

    write_manifest(tmp_path / "valid.jsonl", rows[:4])
    train_tokenizer([r["text"] for r in rows], tmp_path / "tk", vocab_size=30)
    cfg = {
        "model": {"kind": "ctc", "encoder": {"d_model": 16, "n_heads": 2, "n_layers": 1, "conv_kernel": 3,
                                             "subsampling_channels": 8}},
        "data": {"train": [str(tmp_path / "train.jsonl")], "valid": str(tmp_path / "valid.jsonl"),
                 "tokenizer": str(tmp_path / "tk.model"), "batch_seconds": 8.0, "num_workers": 0,
                 "max_duration": 20.0},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "max_steps": 1000, "max_epochs": 1, "checkpoint_every": 1000,
                  "log_every": 10, "seed": 0},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_experiment(tmp_path / "exp.yaml"), tmp_path / "exp", device="cpu", progress=False)
    trainer.train()  # one full epoch: every utterance is read once
    err = capsys.readouterr().err
    assert len(re.findall(r"longer than 20.0 s are not used: u190$", err, re.M)) == 1
    assert len(re.findall(r"^error: u130: .*u130\.wav: 1 non-finite samples", err, re.M)) == 1
    assert [u for u, _ in trainer.failed] == ["u130"]
    assert re.search(r"^done: \d+ steps, 1 epochs; 1 utterances could not be read: u130$", err, re.M)
    lines = (prep_err + err).splitlines()
    for utt in bad:  # one line each over prepare and training (u130: its error and the summary)
        assert sum(bool(re.search(rf"\b{utt}\b", line)) for line in lines) == 1 + (utt == "u130"), utt
