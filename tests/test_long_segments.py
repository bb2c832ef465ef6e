"""Long segments: concatenated manifest rows (loader, wave cache, trainer with BPT) and
egs/default/local/long_segments.py (lengths, transcripts, speaker splits)."""

import csv
import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from asr.audio import load_audio
from asr.data import AsrDataset, ManifestError, load_row_audio, read_manifest, write_manifest
from asr.encoder import BPTConfig, EncoderConfig
from asr.features import Fbank, FbankConfig
from asr.models import DecoderConfig, LMConfig, ModelConfig, SARConfig, build_model
from asr.tokenizer import train_tokenizer
from asr.train import Trainer, load_experiment
from asr.data.sampler import pack_batches
from asr.train.wave_cache import WaveCache

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs" / "default" / "local"))
import long_segments as ls  # noqa: E402
import splits  # noqa: E402

CORPORA = REPO.parent / "shared" / "corpora"
if not CORPORA.is_dir():
    CORPORA = Path("/work/shared/corpora")
SENTENCES = ["THE CAT SAT ON THE MAT", "OPEN THE DOOR PLEASE", "WHERE IS MY BOOK", "SEVEN EIGHT NINE",
             "GOOD MORNING TO YOU", "HELLO WORLD"]


@pytest.fixture
def parts(tmp_path, speechlike):
    """Six manifest rows of one speaker, 16-bit WAVs of 1.0 .. 1.5 s (one at 22.05 kHz, resampled)."""
    rows = []
    for i, text in enumerate(SENTENCES):
        rate = 22050 if i == 2 else 16000
        path = tmp_path / f"spk1-{i:04d}.wav"
        sf.write(path, speechlike(1.0 + 0.1 * i, rate, i), rate, subtype="PCM_16")
        rows.append({"id": f"spk1-{i:04d}", "audio": str(path), "text": text, "speaker": "spk1",
                     "duration": 1.0 + 0.1 * i})
    return rows


def _expected(rows, gap):
    silence = torch.zeros(int(round(gap * 16000)))
    pieces = []
    for k, r in enumerate(rows):
        pieces += ([silence] if k else []) + [load_audio(r["audio"], r.get("start"), r.get("end"))]
    return torch.cat(pieces)


def test_joined_row_loads_to_its_parts_with_gaps(parts, tmp_path):
    row = ls.join_rows(parts, gap=0.25)
    assert row["id"] == "spk1-0000_cat6" and row["text"] == " ".join(SENTENCES)
    assert row["duration"] == pytest.approx(sum(r["duration"] for r in parts) + 5 * 0.25)
    write_manifest(tmp_path / "long.jsonl", [row])
    back = read_manifest(tmp_path / "long.jsonl")[0]
    assert back["audio"] == [r["audio"] for r in parts] and back["gap"] == 0.25
    wave = load_row_audio(back)
    assert torch.equal(wave, _expected(parts, 0.25))
    assert wave.numel() / 16000 == pytest.approx(back["duration"], abs=1e-3)
    tok = train_tokenizer(SENTENCES * 5, tmp_path / "tk", vocab_size=30)
    utt, got, ids = AsrDataset([back], tok)[0]
    assert utt == back["id"] and torch.equal(got, wave)
    assert ids.tolist() == tok.encode(" ".join(SENTENCES))


def test_joined_row_cuts_each_part(parts):
    cut = [dict(parts[0], start=0.2, end=0.7), dict(parts[1]), dict(parts[2], start=0.5)]
    row = ls.join_rows(cut, gap=0.0)
    assert row["start"] == [0.2, None, 0.5] and row["end"] == [0.7, None, None] and row["gap"] is None
    assert torch.equal(load_row_audio(row), _expected(cut, 0.0))
    plain = ls.join_rows(parts[:1], gap=0.1)  # one part: just that audio
    assert torch.equal(load_row_audio(plain), load_audio(parts[0]["audio"]))


def test_plain_manifests_are_written_as_before(tmp_path):
    write_manifest(tmp_path / "m.jsonl", [{"id": "a", "audio": "/x.wav", "text": "A", "duration": 1.0}])
    line = (tmp_path / "m.jsonl").read_text()
    assert json.loads(line) == {"id": "a", "audio": "/x.wav", "text": "A", "speaker": None, "duration": 1.0,
                                "start": None, "end": None}


@pytest.mark.parametrize("row,message", [
    ({"audio": []}, "non-empty list of paths"),
    ({"audio": ["/a.wav", 3]}, "non-empty list of paths"),
    ({"audio": ["/a.wav", "/b.wav"], "start": [0.0]}, "start of a row with 2 audio parts"),
    ({"audio": ["/a.wav", "/b.wav"], "end": 1.0}, "end of a row with 2 audio parts"),
    ({"audio": ["/a.wav"], "gap": -1}, "gap must be a non-negative"),
])
def test_bad_concatenated_row_names_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "ok", "audio": "/a.wav", "text": "A", "duration": 1}) + "\n"
                    + json.dumps({"id": "x", "text": "A", "duration": 1, **row}) + "\n")
    with pytest.raises(ManifestError, match=f"bad.jsonl:2: .*{message}"):
        read_manifest(path)


def test_missing_part_is_an_audio_error_naming_the_file(parts, tmp_path):
    row = ls.join_rows(parts[:2] + [dict(parts[2], audio=str(tmp_path / "gone.wav"))], gap=0.1)
    tok = train_tokenizer(SENTENCES * 5, tmp_path / "tk", vocab_size=30)
    utt, wave, message = AsrDataset([row], tok)[0]
    assert wave is None and "gone.wav" in message


def test_wave_cache_holds_the_concatenation(parts, tmp_path):
    long = ls.join_rows(parts, gap=0.3)
    rows = parts + [long, ls.join_rows(parts[3:], gap=0.0)]
    tok = train_tokenizer(SENTENCES * 5, tmp_path / "tk", vocab_size=30)
    ds = AsrDataset(rows, tok, speeds=(0.9, 1.0, 1.1), seed=1)
    cache = WaveCache(ds, torch.device("cpu"), num_workers=0, read_batch=3, read_seconds=12.0, progress=False)

    def stored(i):  # int16 samples as cached, before speed perturbation
        return cache.audio[cache.offsets[i]: cache.offsets[i] + cache.lengths[i]]

    gap = torch.zeros(int(0.3 * 16000), dtype=torch.int16)
    pieces = [p for i in range(len(parts)) for p in ([gap] if i else []) + [stored(i)]]
    assert torch.equal(stored(6), torch.cat(pieces))
    assert torch.equal(stored(7), torch.cat([stored(3), stored(4), stored(5)]))
    assert cache.lengths[6] == load_row_audio(long).numel()
    got = cache.batch([6, 0], epoch=0)
    assert got.tokens[0, : int(got.token_lens[0])].tolist() == tok.encode(long["text"])
    # speed perturbation applies to the whole segment, as in the data loader
    for epoch in range(4):
        b = cache.batch([6], epoch)
        n = load_row_audio(long).numel()
        speed = ds.speed(6, epoch)
        assert int(b.wave_lens[0]) == (n if speed == 1.0 else -(-n * 16000 // int(round(16000 * speed))))


def test_reading_batches_bound_rows_and_padded_seconds():
    durations = [5.0] * 10 + [300.0] * 5 + [2.0] * 3
    batches = pack_batches(range(len(durations)), durations, max_seconds=610.0, max_rows=4)
    assert [i for b in batches for i in b] == list(range(18))
    assert all(len(b) <= 4 and max(durations[i] for i in b) * len(b) <= 610 for b in batches)
    assert pack_batches(range(130), [5.0] * 130, 1920.0, 64) == [list(range(64)), list(range(64, 128)), [128, 129]]
    assert pack_batches(range(2), [700.0, 1.0], 600.0, 64) == [[0], [1]]  # a row longer than the bound alone


def test_plan_runs_bounds_and_order():
    rng = random.Random(0)
    durations = [rng.uniform(2, 20) for _ in range(400)]
    runs = ls.plan_runs(durations, 60, 300, 0.2, random.Random(1))
    flat = [i for r in runs for i in r]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    for r in runs:
        assert r == list(range(r[0], r[-1] + 1))  # consecutive utterances
        assert 60 <= sum(durations[i] for i in r) + 0.2 * (len(r) - 1) <= 300
    lengths = [sum(durations[i] for i in r) for r in runs]
    assert min(lengths) < 120 and max(lengths) > 240  # targets spread over the range
    kept = ls.plan_runs(durations, 60, 300, 0.2, random.Random(1), keep_short=True)
    assert [i for r in kept for i in r] == list(range(400))  # evaluation: every utterance
    assert ls.plan_runs([40, 40, 40, 40], 80, 80, 0.0, random.Random(0)) == [[0, 1], [2, 3]]
    assert ls.plan_runs([30, 30], 80, 100, 0.0, random.Random(0)) == []  # too short for a segment


def test_long_rows_stay_within_a_chapter_or_speaker():
    def row(utt, spk, d=25.0):
        return {"id": utt, "audio": f"/{utt}.wav", "text": utt.upper(), "speaker": spk, "duration": d}

    libri = [row(f"ls1-1-{c}-{i:04d}", "ls1") for c in (100, 200) for i in range(12)]
    so = [row(f"so{s}-{i:09d}", f"so{s}") for s in (1, 2) for i in range(12)]
    out = ls.long_rows({"librispeech-mini": libri, "speechocean762": so}, 60, 300, 0.2, seed=0, draws=2)
    assert out
    for r in out:
        ids = [Path(a).stem for a in r["audio"]]
        key = {i.rsplit("-", 1)[0] if i.startswith("ls") else i.split("-")[0] for i in ids}
        assert len(key) == 1 and ids == sorted(ids)
        assert r["text"] == " ".join(i.upper() for i in ids)
        assert 60 <= r["duration"] <= 300 and r["gap"] == 0.2
    assert len({r["id"] for r in out}) == len(out)  # the draws get their own ids
    assert {r["id"][-3:] for r in out} == {"_d0", "_d1"}


@pytest.mark.skipif(not CORPORA.is_dir(), reason="shared/corpora not found")
def test_training_segments_never_hold_a_devtest_or_validation_speaker():
    """From the Kaldi dirs of shared/corpora (speaker tables only, no audio read)."""
    sets = ls.train_rows_from_kaldi(CORPORA)
    assert set(sets) == set(ls.LONG_CORPORA)
    held = set()
    for corpus, split, n_valid, _ in splits.TRAIN:
        _, _, spk = splits.read_kaldi(CORPORA / corpus / split)
        train_spk, valid_spk = splits.split_speakers(corpus, split, spk, n_valid)
        held |= valid_spk | splits.devtest_speakers(corpus, split, spk)
    for _, corpus, split in splits.DEVTEST:
        _, _, spk = splits.read_kaldi(CORPORA / corpus / split)
        held |= splits.devtest_speakers(corpus, split, spk)
    assert len(held) > 40
    speakers = {r["speaker"] for rows in sets.values() for r in rows}
    assert speakers and not speakers & held
    for rows in sets.values():
        for r in rows:
            r["duration"] = 10.0
    joined = ls.long_rows(sets, 60, 300, 0.2, draws=3)
    assert joined and not {r["speaker"] for r in joined} & held
    assert all(Path(a).is_relative_to(CORPORA.resolve()) for r in joined[:50] for a in r["audio"])
    dev = ls.devtest_rows_from_kaldi(CORPORA)
    assert set(dev) == {name for name, _, _ in splits.DEVTEST}
    dev_speakers = {r["speaker"] for _, rows in dev.values() for r in rows}
    assert dev_speakers <= held and not dev_speakers & speakers
    _, _, so_dev = splits.read_kaldi(CORPORA / "speechocean762" / "dev")
    assert {r["speaker"] for r in dev["speechocean762_devtest"][1]} == \
        splits.devtest_speakers("speechocean762", "dev", so_dev)


def test_read_train_manifests_takes_the_training_splits_only(tmp_path):
    for name in ("librispeech-mini_train", "librispeech-mini_valid_train", "speechocean762_dev", "fsdd_all",
                 "an4_test", "tts_train"):
        write_manifest(tmp_path / f"{name}.jsonl", [{"id": f"{name}-1", "audio": "/a.wav", "text": "A",
                                                     "speaker": name, "duration": 1.0}])
    sets = ls.read_train_manifests(tmp_path)
    assert {c: [r["id"] for r in rows] for c, rows in sets.items()} == {
        "librispeech-mini": ["librispeech-mini_train-1"], "speechocean762": ["speechocean762_dev-1"]}


def test_script_writes_devtest_wavs_that_decode_reads_as_plain_rows(parts, tmp_path, monkeypatch):
    """--devtest: each segment one WAV, listed as a plain row (what `asr decode --data` reads)."""
    corpus = tmp_path / "corpora" / "librispeech-mini"
    (corpus / "dev").mkdir(parents=True)
    (corpus / "audio").mkdir()
    utts = [f"ls9-9-{100 + i // 3}-{i % 3:04d}" for i in range(6)]
    for u, r in zip(utts, parts):
        Path(r["audio"]).rename(corpus / "audio" / f"{u}.wav")
    (corpus / "dev" / "wav.scp").write_text("".join(f"{u} audio/{u}.wav\n" for u in utts))
    (corpus / "dev" / "text").write_text("".join(f"{u} {t}\n" for u, t in zip(utts, SENTENCES)))
    (corpus / "dev" / "utt2spk").write_text("".join(f"{u} ls9\n" for u in utts))
    monkeypatch.setattr(sys, "argv", ["long_segments.py", "--devtest", "--corpora", str(tmp_path / "corpora"),
                                      "--sets", "librispeech_dev", "--out", str(tmp_path / "out"),
                                      "--min", "2", "--max", "3", "--jobs", "1"])
    assert ls.main() == 0
    rows = read_manifest(tmp_path / "out" / "librispeech_dev.jsonl")
    assert " ".join(r["text"] for r in rows) == " ".join(SENTENCES)  # every utterance, in order
    assert all(isinstance(r["audio"], str) and "gap" not in r for r in rows)
    chapters = [r["id"].rsplit("-", 1)[0] for r in rows]
    assert set(chapters) == {"ls9-9-100", "ls9-9-101"}
    n_parts = int(rows[0]["id"].split("_cat")[1])
    want = _expected([{"audio": str(corpus / "audio" / f"{u}.wav")} for u in utts[:n_parts]], 0.2)
    got = load_audio(rows[0]["audio"])
    assert got.numel() == want.numel() and (got - want).abs().max() <= 1 / 32768 + 1e-7  # PCM-16
    assert rows[0]["duration"] == pytest.approx(want.numel() / 16000)


# ---------------------------------------------------------------- training with BPT on a long segment
def _long_row(tmp_path, speechlike, seconds_each=10.0, n=6):
    rows = []
    for i in range(n):
        path = tmp_path / f"seg-{i:04d}.wav"
        sf.write(path, speechlike(seconds_each, 16000, 10 + i), 16000, subtype="PCM_16")
        rows.append({"id": f"seg-{i:04d}", "audio": str(path), "text": SENTENCES[i % len(SENTENCES)],
                     "speaker": "seg", "duration": seconds_each})
    return ls.join_rows(rows, gap=0.2)


def _tiny_cfg(vocab, bpt):
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=0.0, train_block_sizes=(None,),
                              train_left_blocks=(None,), bpt=bpt)
    return ModelConfig(vocab_size=vocab, kind="sar", encoder=enc,
                       decoder=DecoderConfig(d_model=64, n_layers=1, dropout=0.0),
                       sar=SARConfig(lm=LMConfig(d_model=64, n_layers=1, dropout=0.0), fusion_layers=1, dropout=0.0))


def test_bpt_training_step_on_a_61_s_segment_equals_the_plain_path(tmp_path, speechlike):
    row = _long_row(tmp_path, speechlike)
    assert row["duration"] == pytest.approx(61.0)
    tok = train_tokenizer(SENTENCES * 5, tmp_path / "tk", vocab_size=30)
    _, wave, tokens = AsrDataset([row], tok)[0]
    feats, feat_lens = Fbank(FbankConfig())(wave[None], torch.tensor([wave.numel()]))
    assert feats.shape[1] > 6000  # 1525 encoder frames: several BPT tiles of 512
    torch.manual_seed(0)
    # float64: in float32 the sums over 6000 frames differ by ~1e-4 relative between the paths, and
    # by how much depends on the CPU's kernels (AVX2 vs AVX-512), which is rounding, not a difference
    plain = build_model(_tiny_cfg(tok.vocab_size, None)).double().train()
    fast = build_model(_tiny_cfg(tok.vocab_size, BPTConfig(query_block=512, key_block=384, frame_block=256)))
    fast = fast.double().train()
    fast.load_state_dict(plain.state_dict())
    args = (feats.double(), feat_lens, tokens[None], torch.tensor([tokens.numel()]), None, None)
    ref, got = plain(*args), fast(*args)
    for name in ("total", "ctc", "att", "sar", "lm"):
        assert float(getattr(got, name).detach()) == pytest.approx(float(getattr(ref, name).detach()), rel=1e-10), name
    ref.total.backward()
    got.total.backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert float((p.grad - q.grad).norm()) <= 1e-9 * float(p.grad.norm()) + 1e-12, name  # k bias: 0 + rounding
    opt = torch.optim.AdamW(fast.parameters(), lr=1e-3)
    opt.step()
    with torch.no_grad():
        assert float(fast(*args).total) < float(got.total.detach())  # the step learned something


def test_trainer_runs_bpt_on_concatenated_rows_from_the_wave_cache(tmp_path, speechlike):
    """The recipe's path: YAML with encoder.bpt, a concatenated manifest, cache_waves, one step each."""
    row = _long_row(tmp_path, speechlike, seconds_each=5.0, n=4)
    write_manifest(tmp_path / "long.jsonl", [row])
    train_tokenizer(SENTENCES * 5, tmp_path / "tk", vocab_size=30)
    losses = {}
    for name, bpt in (("plain", None), ("bpt", {"query_block": 128, "key_block": 96, "frame_block": 64})):
        cfg = {
            "model": {"kind": "sar", "encoder": {"d_model": 32, "n_heads": 2, "n_layers": 1, "conv_kernel": 5,
                                                 "subsampling_channels": 16, "dropout": 0.0,
                                                 "train_block_sizes": [None], "train_left_blocks": [None],
                                                 "bpt": bpt},
                      "sar": {"lm": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dropout": 0.0},
                              "fusion_layers": 1, "n_heads": 2, "dropout": 0.0}},
            "data": {"train": [str(tmp_path / "long.jsonl")], "tokenizer": str(tmp_path / "tk.model"),
                     "batch_seconds": 30.0, "max_duration": 30.0, "num_workers": 0, "speeds": [1.0],
                     "cache_waves": True},
            "optim": {"lr": 1e-3, "warmup_steps": 1, "max_steps": 1, "log_every": 1, "spec_augment": None,
                      "checkpoint_every": 1},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        Trainer(load_experiment(path), tmp_path / name, device="cpu", progress=False).train()
        with open(tmp_path / name / "train.csv") as f:
            losses[name] = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses["bpt"]) == 1
    assert losses["bpt"] == pytest.approx(losses["plain"], rel=1e-4)


def test_offline_long_config_loads():
    cfg = load_experiment(REPO / "egs" / "default" / "conf" / "offline_long.yaml", vocab_size=256)
    enc = cfg.model.encoder
    assert enc.train_block_sizes == (None,) and enc.bpt is not None
    assert cfg.data.max_duration >= 300 and cfg.init == str(REPO / "models" / "default")
    assert Path(cfg.data.train[0]).name == "long_train.jsonl"
    sar = load_experiment(REPO / "egs" / "default" / "conf" / "sar.yaml", vocab_size=256)
    same = dataclasses.replace(enc, train_block_sizes=sar.model.encoder.train_block_sizes,
                               train_left_blocks=sar.model.encoder.train_left_blocks, bpt=None)
    assert dataclasses.replace(cfg.model, encoder=same) == sar.model  # init's weights fit


@pytest.mark.slow
@pytest.mark.skipif(not CORPORA.is_dir(), reason="shared/corpora not found")
def test_recipe_trains_offline_long_for_a_step_and_exports(tmp_path):
    """`run.sh --model offline_long --stage 2 --stop-stage 3 --train-seconds S` on CPU, in a copy of
    egs/default whose data/ holds two long segments and a few utterances (the shipped model: 2.5 min
    on 2 idle cores, 20 min on 2 cores shared with other jobs)."""
    import shutil
    import subprocess

    from asr.audio import audio_duration

    for name in ("asr", "blockasr", "recipes", "models", "streaming"):
        (tmp_path / name).symlink_to(REPO / name)
    egs = tmp_path / "egs" / "default"
    shutil.copytree(REPO / "egs" / "default" / "conf", egs / "conf")
    shutil.copytree(REPO / "egs" / "default" / "local", egs / "local")
    conf = egs / "conf" / "offline_long.yaml"  # one step, whatever the machine's speed
    conf.write_text(conf.read_text().replace("max_steps: 1000000 ", "max_steps: 1 "))
    assert "max_steps: 1 " in conf.read_text()
    shutil.copy(REPO / "egs" / "default" / "run.sh", egs / "run.sh")
    man = egs / "data" / "manifests"
    sets = ls.train_rows_from_kaldi(CORPORA)
    small = {c: rows[:12] for c, rows in sets.items()}
    for rows in small.values():
        for r in rows:
            r["duration"] = round(audio_duration(r["audio"]), 4)
    for name, corpus in (("speechocean762_train", "speechocean762"), ("speechocean762_dev", "speechocean762"),
                         ("librispeech-mini_train", "librispeech-mini"), ("an4_train", "an4"),
                         ("ljspeech-part_train", "ljspeech-part")):
        write_manifest(man / f"{name}.jsonl", small[corpus][:2])
    long = ls.long_rows({"librispeech-mini": small["librispeech-mini"]}, 60, 80, 0.2)[:2]
    assert len(long) == 2
    write_manifest(man / "long_train.jsonl", long)
    write_manifest(man / "valid.jsonl", small["an4"][4:6])
    import numpy as np

    np.save(egs / "data" / "rirs.npy", np.exp(-np.arange(400) / 50.0)[None].astype(np.float32))
    env = {**__import__("os").environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(egs / "run.sh"), "--model", "offline_long", "--stage", "2", "--stop-stage", "3",
                           "--train-seconds", "3600"], capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = egs / "exp" / "offline_long"
    with open(exp / "train.csv") as f:
        steps = list(csv.DictReader(f))
    assert [r["step"] for r in steps] == ["1"] and float(steps[0]["loss"]) > 0
    exported = yaml.safe_load((exp / "model" / "config.yaml").read_text())["model"]["encoder"]
    assert exported["bpt"] == {"query_block": 2048, "key_block": 2048, "frame_block": 1024}
    assert exported["train_block_sizes"] == [None]
