import json
import shutil

import pytest
import torch

from asr.data import (AsrDataset, DurationBatchSampler, SpecAugmentConfig, collate, kaldi_to_manifest,
                      read_manifest, spec_augment, speed_perturb)
from asr.data.manifest import ManifestError
from asr.tokenizer import train_tokenizer


def test_kaldi_dir_to_manifest(kaldi_dir, tmp_path):
    report = kaldi_to_manifest(kaldi_dir, tmp_path / "m.jsonl", progress=False)
    assert report.errors == []
    rows = read_manifest(tmp_path / "m.jsonl")
    assert [r["id"] for r in rows] == ["u1", "u2", "u3"]
    assert rows[1]["text"] == "GOOD MORNING" and rows[1]["speaker"] == "spk1"
    assert rows[2]["duration"] == pytest.approx(2.0, abs=1e-3)
    assert all(r["audio"].startswith("/") for r in rows)


def test_missing_and_truncated_are_reported(kaldi_dir, tmp_path, capsys):
    audio = kaldi_dir.parent / "audio"
    (audio / "u1.wav").unlink()
    raw = (audio / "u3.ogg").read_bytes()
    (audio / "u3.ogg").write_bytes(raw[: len(raw) // 2])
    report = kaldi_to_manifest(kaldi_dir, tmp_path / "m.jsonl", progress=False)
    assert sorted(u for u, _ in report.errors) == ["u1", "u3"]
    assert [r["id"] for r in read_manifest(tmp_path / "m.jsonl")] == ["u2"]
    err = capsys.readouterr().err
    assert "u1" in err and "no such audio file" in err and "u3" in err


def test_segments_and_missing_text(kaldi_dir, tmp_path):
    (kaldi_dir / "segments").write_text("s1 u3 0.10 0.60\ns2 u3 1.00 1.90\n")
    (kaldi_dir / "text").write_text("s1 SEE YOU\ns2 SOON\n")
    report = kaldi_to_manifest(kaldi_dir, tmp_path / "m.jsonl", progress=False)
    rows = read_manifest(tmp_path / "m.jsonl")
    assert [(r["id"], r["start"], r["end"]) for r in rows] == [("s1", 0.1, 0.6), ("s2", 1.0, 1.9)]
    assert rows[0]["duration"] == pytest.approx(0.5)
    assert report.errors == []


def test_manifest_errors_name_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"id": "a", "audio": "/x", "text": "A", "duration": 1}\n{bad\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(p)


def test_sampler_bounds_and_covers_everything():
    durations = [0.5 + (i * 37 % 100) / 10 for i in range(500)]
    sampler = DurationBatchSampler(durations, max_seconds=40, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(max(durations[i] for i in b) * len(b) <= 40 or len(b) == 1 for b in batches)
    assert sampler.epoch == 1 and list(sampler) != batches  # next epoch reshuffles


def test_sampler_resume_mid_epoch():
    durations = [1 + (i % 13) for i in range(200)]
    straight = DurationBatchSampler(durations, max_seconds=30, seed=1)
    expected = list(straight) + list(straight)
    first = DurationBatchSampler(durations, max_seconds=30, seed=1)
    it = iter(first)
    got = [next(it) for _ in range(7)]
    resumed = DurationBatchSampler(durations, max_seconds=30, seed=1)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += list(resumed) + list(resumed)
    assert got == expected


def test_sampler_shards_for_ddp():
    durations = [1.0] * 100
    shards = [list(DurationBatchSampler(durations, 10, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))


def test_dataset_reports_corrupt_audio(kaldi_dir, tmp_path, capsys):
    kaldi_to_manifest(kaldi_dir, tmp_path / "m.jsonl", progress=False)
    rows = read_manifest(tmp_path / "m.jsonl")
    tok = train_tokenizer([r["text"] for r in rows] * 10, tmp_path / "tk", vocab_size=30)
    (kaldi_dir.parent / "audio" / "u2.flac").write_bytes(b"not audio")
    ds = AsrDataset(rows, tok, speeds=(0.9, 1.0, 1.1), seed=0)
    batch = collate([ds[i] for i in range(3)])
    assert batch.ids == ["u1", "u3"] and [u for u, _ in batch.failed] == ["u2"]
    assert "u2" in capsys.readouterr().err
    assert batch.waves.shape[0] == 2 and int(batch.token_lens[0]) == len(tok.encode("HELLO WORLD"))
    assert tok.decode(batch.tokens[1, : batch.token_lens[1]].tolist()) == "SEE YOU SOON"


def test_spec_augment_masks_within_length():
    feats = torch.randn(3, 200, 80)
    lens = torch.tensor([200, 150, 90])
    out = spec_augment(feats, lens, SpecAugmentConfig(), torch.Generator().manual_seed(0))
    masked = out == 0
    assert masked.any() and out.shape == feats.shape
    assert torch.equal(out[~masked], feats[~masked])
    # time masks never start beyond an utterance's length
    time_masked = masked.all(dim=2)
    for b, n in enumerate(lens.tolist()):
        assert not time_masked[b, n:].any() or n == 200


def test_speed_perturb_changes_length():
    wave = torch.randn(16000)
    assert abs(speed_perturb(wave, 1.1).numel() - 16000 / 1.1) < 2
    assert abs(speed_perturb(wave, 0.9).numel() - 16000 / 0.9) < 2
    assert speed_perturb(wave, 1.0) is wave


def test_piped_entry_and_missing_recording_are_reported(kaldi_dir, tmp_path):
    scp = (kaldi_dir / "wav.scp").read_text().replace("u2 audio/u2.flac", "u2 sox audio/u2.flac -t wav - |")
    (kaldi_dir / "wav.scp").write_text(scp)
    (kaldi_dir / "text").write_text((kaldi_dir / "text").read_text() + "u4 NO AUDIO\n")
    report = kaldi_to_manifest(kaldi_dir, tmp_path / "m.jsonl", progress=False)
    errors = dict(report.errors)
    assert sorted(errors) == ["u2", "u4"]
    assert "piped wav.scp" in errors["u2"] and "not in wav.scp" in errors["u4"]
    assert [r["id"] for r in report.rows] == ["u1", "u3"]
