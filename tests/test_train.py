"""The trainer: exact resume, checkpoints, logs, averaging and export."""

import csv

import pytest
import torch
import yaml

from blockasr.cli import main as asr_main
from asr.models.io import load_model_dir
from asr.tokenizer import train_tokenizer
from asr.train import Trainer, list_checkpoints, load_experiment


@pytest.fixture
def experiment(tts_corpus, tmp_path):
    from asr.data import read_manifest

    rows = read_manifest(tts_corpus / "all.jsonl")
    train_tokenizer([r["text"] for r in rows] * 5, tmp_path / "tk", vocab_size=40)
    cfg = {
        "model": {"kind": "sar", "encoder": {"d_model": 32, "n_heads": 2, "n_layers": 1, "conv_kernel": 5,
                                             "subsampling_channels": 16, "dropout": 0.1,
                                             "train_block_sizes": [None, 4], "train_left_blocks": [None, 1]},
                  "sar": {"lm": {"d_model": 32, "n_heads": 2, "n_layers": 1}, "fusion_layers": 1, "n_heads": 2}},
        "data": {"train": [str(tts_corpus / "all.jsonl")], "valid": str(tts_corpus / "all.jsonl"),
                 "tokenizer": str(tmp_path / "tk.model"), "batch_seconds": 4.0, "num_workers": 0},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 8, "checkpoint_every": 4, "log_every": 1,
                  "seed": 3},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(exp_dir):
    with open(exp_dir / "train.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_resume_is_exact(experiment, tmp_path):
    cfg = load_experiment(experiment)
    Trainer(cfg, tmp_path / "straight", device="cpu", progress=False).train()
    import dataclasses

    half = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=4))
    Trainer(half, tmp_path / "resumed", device="cpu", progress=False).train()  # "killed" after step 4
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["checkpoint-4.pt"]
    Trainer(cfg, tmp_path / "resumed", device="cpu", progress=False).train()
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [s for s, _ in resumed] == list(range(1, 9))
    assert [s for s, _ in straight] == list(range(1, 9))
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)
    assert (tmp_path / "resumed" / "curves.png").is_file()
    with open(tmp_path / "straight" / "valid.csv") as f:
        valid = list(csv.DictReader(f))
    assert valid and "wer_full" in valid[0] and "wer_640ms" in valid[0]


def test_unknown_key_is_reported(experiment):
    experiment.write_text(experiment.read_text().replace("max_steps", "max_stepz"))
    with pytest.raises(ValueError, match=r"exp.yaml.*unknown key 'max_stepz'"):
        load_experiment(experiment)


def test_cli_train_average_export(experiment, tmp_path, capsys):
    exp = tmp_path / "exp"
    assert asr_main(["train", "--config", str(experiment), "--out", str(exp), "--no-progress"]) == 0
    assert asr_main(["average", "--exp", str(exp), "--num", "2", "--out", str(exp / "avg.pt")]) == 0
    assert asr_main(["export", "--exp", str(exp), "--weights", str(exp / "avg.pt"),
                     "--out", str(tmp_path / "model"), "--half"]) == 0
    loaded = load_model_dir(tmp_path / "model")
    avg = torch.load(exp / "avg.pt", weights_only=False)["model"]
    for k, v in loaded.model.state_dict().items():
        assert torch.allclose(v, avg[k].float(), atol=1e-2), k  # float16 storage
    assert torch.equal(loaded.model.cmvn.mean, avg["cmvn.mean"])  # CMVN kept in float32


def test_feature_cache_matches_waveform_batches(experiment, tmp_path):
    """Cached float16 features give the waveform path's batches (same order, speeds, values)."""
    import dataclasses

    from asr.train.feature_cache import FeatureBatch

    cfg = load_experiment(experiment)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=3, spec_augment=None))
    wave = Trainer(cfg, tmp_path / "wave", device="cpu", progress=False)
    cached_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_features=True))
    cached = Trainer(cached_cfg, tmp_path / "cached", device="cpu", progress=False)
    assert set(cached.dataset.speeds) == {0.9, 1.0, 1.1}
    for epoch in (0, 1):
        wave.epoch = cached.epoch = epoch
        for a, b in zip(wave._loader(), cached._loader()):
            assert isinstance(b, FeatureBatch) and a.ids == b.ids
            feats, lens = wave.fbank(a.waves, a.wave_lens)
            assert torch.equal(lens, b.feat_lens) and torch.equal(a.tokens, b.tokens)
            torch.testing.assert_close(b.feats, feats, atol=0.02, rtol=2e-3)  # float16 storage
    wave.train()
    cached.train()
    w, c = _losses(tmp_path / "wave"), _losses(tmp_path / "cached")
    assert [v for _, v in c] == pytest.approx([v for _, v in w], rel=1e-2)


def test_resume_is_exact_with_feature_cache(experiment, tmp_path):
    import dataclasses

    cfg = load_experiment(experiment)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_features=True))
    Trainer(cfg, tmp_path / "straight", device="cpu", progress=False).train()
    half = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=4))
    Trainer(half, tmp_path / "resumed", device="cpu", progress=False).train()
    Trainer(cfg, tmp_path / "resumed", device="cpu", progress=False).train()
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)


def test_feature_cache_with_repeated_ids(experiment):
    """Merged manifests may repeat utterance ids; the cache keys on the dataset index."""
    from asr.data import AsrDataset, read_manifest
    from asr.features import Fbank, FbankConfig
    from asr.tokenizer import Tokenizer
    from asr.train.feature_cache import FeatureCache

    cfg = load_experiment(experiment)
    rows = read_manifest(cfg.data.train[0])[:3]
    dataset = AsrDataset(rows + rows, Tokenizer(cfg.data.tokenizer), (1.0, 1.1))
    cache = FeatureCache(dataset, Fbank(FbankConfig()), num_workers=0, read_batch=2, progress=False)
    batch = cache.batch(list(range(6)), epoch=0)
    assert batch.ids == [r["id"] for r in rows + rows] and not batch.failed


def test_ctc_warmup_then_all_heads_and_exact_resume(experiment, tmp_path):
    """The first ctc_warmup_steps train CTC alone; the other heads join after; resume is exact across."""
    import dataclasses

    cfg = load_experiment(experiment)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ctc_warmup_steps=3))
    Trainer(cfg, tmp_path / "straight", device="cpu", progress=False).train()
    with open(tmp_path / "straight" / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(not r["sar"] and float(r["loss"]) == pytest.approx(float(r["ctc"]), rel=1e-4) for r in rows[:3])
    assert all(r["sar"] and r["lm"] for r in rows[3:])
    half = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=2))
    Trainer(half, tmp_path / "resumed", device="cpu", progress=False).train()
    Trainer(cfg, tmp_path / "resumed", device="cpu", progress=False).train()
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)


def test_deadline_stops_at_a_step_boundary_and_resume_is_exact(experiment, tmp_path, monkeypatch):
    """A wall-clock deadline ends the run with a checkpoint at the step it reached; running again goes on."""
    import itertools

    import asr.train.trainer as trainer_module

    cfg = load_experiment(experiment)
    Trainer(cfg, tmp_path / "straight", device="cpu", progress=False).train()
    clock = itertools.count()  # a fake monotonic clock: one tick per look at it
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: float(next(clock)))
    stopped = Trainer(cfg, tmp_path / "resumed", device="cpu", progress=False)
    stopped.train(deadline=4.0)
    monkeypatch.undo()
    assert 0 < stopped.step < cfg.optim.max_steps
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")][-1] == f"checkpoint-{stopped.step}.pt"
    Trainer(cfg, tmp_path / "resumed", device="cpu", progress=False).train()
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [s for s, _ in resumed] == [s for s, _ in straight]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in straight], rel=1e-5)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_deadline_schedule_anneals_with_the_time_left(experiment, tmp_path, monkeypatch):
    """schedule: deadline: warm-up, then the LR falls linearly with the clock to min_lr_ratio."""
    import dataclasses

    import asr.train.trainer as trainer_module

    cfg = load_experiment(experiment)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule="deadline", min_lr_ratio=0.1,
                                                             max_steps=100))
    now = [0.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: now[0])
    trainer = Trainer(cfg, tmp_path / "anneal", device="cpu", progress=False)
    real_step = trainer.optimizer.step

    def step_and_tick(*args, **kwargs):  # each optimizer step takes 1 s of the fake clock
        now[0] += 1.0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", step_and_tick)
    trainer.train(deadline=10.0)
    with open(tmp_path / "anneal" / "train.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    lr, warm = cfg.optim.lr, cfg.optim.warmup_steps
    expected = [lr * min(s, warm) / warm * max(0.1, (10.0 - s) / 10.0) for s in range(1, len(lrs) + 1)]
    assert len(lrs) == 10 and lrs == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="optim.schedule"):
        dataclasses.replace(cfg.optim, schedule="cosine")


@pytest.mark.slow
def test_data_parallel_two_processes(experiment, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks step together, stop together, rank 0 writes."""
    import os
    import subprocess
    import sys

    exp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "blockasr", "train", "--config", str(experiment), "--out", str(exp),
           "--device", "cpu", "--no-progress", "--max-steps", "4", "--max-seconds", "600"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in list_checkpoints(exp)] == ["checkpoint-4.pt"]
    assert [s for s, _ in _losses(exp)] == [1, 2, 3, 4]
    ck = torch.load(exp / "checkpoint-4.pt", weights_only=False)
    assert len(ck["rng"]["ranks"]) == 2


def test_wave_cache_matches_waveform_batches(experiment, tmp_path):
    """The int16 waveform cache gives the waveform path's batches: same order, speeds and audio."""
    import dataclasses

    cfg = load_experiment(experiment)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=3))
    wave = Trainer(cfg, tmp_path / "wave", device="cpu", progress=False)
    cached = Trainer(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_waves=True)),
                     tmp_path / "cached", device="cpu", progress=False)
    for epoch in (0, 1):
        wave.epoch = cached.epoch = epoch
        for a, b in zip(wave._loader(), cached._loader()):
            assert a.ids == b.ids and torch.equal(a.wave_lens, b.wave_lens) and torch.equal(a.tokens, b.tokens)
            assert b.waves.shape[1] % cached.cache.pad_to == 0
            n = a.waves.shape[1]
            torch.testing.assert_close(b.waves[:, :n], a.waves, atol=2e-3, rtol=0)  # int16 storage
            assert torch.all(b.waves[:, n:] == 0)


def test_augmented_training_and_init_from_a_model_dir(experiment, tmp_path):
    """A run with on-device augmentation trains; a fresh run with `init` starts from its weights."""
    import dataclasses

    import numpy as np

    from asr.data.wave_augment import WaveAugmentConfig

    rirs = tmp_path / "rirs.npy"
    np.save(rirs, (np.random.default_rng(0).standard_normal((3, 200)) * np.exp(-np.arange(200) / 40)).astype(np.float16))
    cfg = load_experiment(experiment)
    aug = WaveAugmentConfig(gain_prob=1.0, reverb_prob=1.0, rirs=str(rirs), noise_prob=1.0, telephone_prob=0.5)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_waves=True, augment=aug),
                              optim=dataclasses.replace(cfg.optim, max_steps=3))
    first = Trainer(cfg, tmp_path / "first", device="cpu", progress=False)
    assert first.rirs.shape == (3, 200)
    first.train()
    assert [s for s, _ in _losses(tmp_path / "first")] == [1, 2, 3]
    assert asr_main(["export", "--exp", str(tmp_path / "first"), "--out", str(tmp_path / "model")]) == 0
    second = Trainer(dataclasses.replace(cfg, init=str(tmp_path / "model")), tmp_path / "second", device="cpu",
                     progress=False)
    assert second.step == 0
    for k, v in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[k], v), k


def test_augment_with_feature_cache_is_a_config_error(experiment):
    text = experiment.read_text().replace("num_workers: 0", "num_workers: 0\n  cache_features: true\n  augment: {}")
    experiment.write_text(text)
    with pytest.raises(ValueError, match="cache_waves"):
        load_experiment(experiment)
