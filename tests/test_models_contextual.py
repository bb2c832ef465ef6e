"""A full model with the contextual block encoder (encoder.kind: contextual_block): a SAR model
trains, every streaming decoder runs it through the Recognizer, and `asr train` runs a tiny
version of egs/default/conf/contextual.yaml."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from asr.config import to_dict
from asr.encoder import ContextualBlockEncoder, EncoderConfig
from asr.features import FbankConfig
from asr.inference import InferenceConfig
from asr.models import DecoderConfig, LMConfig, ModelConfig, SARConfig, build_model
from asr.models.io import export_model_dir, load_model_dir
from asr.tokenizer import train_tokenizer
from asr.train import load_experiment
from blockasr.cli import main as asr_main
from streaming.endpoint import EndpointConfig
from streaming.recognizer import Recognizer, process_batch

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["HELLO WORLD", "GOOD MORNING TO YOU", "THE CAT SAT ON THE MAT", "OPEN THE DOOR PLEASE"]


def _model_cfg(vocab_size: int) -> ModelConfig:
    enc = dataclasses.replace(EncoderConfig.tiny(), kind="contextual_block", dropout=0.0,
                              train_block_sizes=(None, 4, 8), train_left_blocks=(None, 2))
    return ModelConfig(vocab_size=vocab_size, kind="sar", encoder=enc,
                       decoder=DecoderConfig(d_model=64, n_layers=1, dropout=0.0),
                       sar=SARConfig(lm=LMConfig(d_model=64, n_layers=1, dropout=0.0), fusion_layers=1, dropout=0.0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny contextual-block SAR model directory (with an attention decoder)."""
    root = tmp_path_factory.mktemp("ctx_model")
    tok = train_tokenizer(SENTENCES * 5, root / "tok", vocab_size=30)
    torch.manual_seed(0)
    cfg = _model_cfg(tok.vocab_size)
    return export_model_dir(build_model(cfg).state_dict(), cfg, FbankConfig(), tok.path, root / "model")


def test_sar_model_training_step():
    torch.manual_seed(0)
    model = build_model(_model_cfg(30)).train()
    assert isinstance(model.encoder, ContextualBlockEncoder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    feats = torch.randn(3, 300, 80) * 3 + 5
    feat_lens = torch.tensor([300, 240, 170])
    tokens = torch.randint(1, 30, (3, 6))
    token_lens = torch.tensor([6, 4, 5])
    gen = torch.Generator().manual_seed(0)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    for _ in range(3):
        block_size, left_blocks = model.encoder.sample_block_config(gen)
        losses = model(feats, feat_lens, tokens, token_lens, block_size, left_blocks)
        assert torch.isfinite(losses.total) and losses.sar is not None and losses.att is not None
        opt.zero_grad()
        losses.total.backward()
        assert all(p.grad is not None for p in model.encoder.parameters())
        opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())


def _run(loaded, cfg, wave, sizes):
    rec = Recognizer(loaded, cfg, endpoint=EndpointConfig(None, None, None))
    results, i, k = [], 0, 0
    while i < wave.size:
        n = sizes[k % len(sizes)]
        results += rec.accept_waveform(wave[i:i + n])
        i, k = i + n, k + 1
    return [(r.text, r.is_final) for r in results + rec.finalize()], rec


@pytest.mark.parametrize("decoder", ["ctc", "sar", "bsbs"])
def test_recognizer_streams_a_random_waveform(model_dir, decoder):
    loaded = load_model_dir(model_dir)
    assert isinstance(loaded.model.encoder, ContextualBlockEncoder)
    wave = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    cfg = InferenceConfig(decoder=decoder, block_ms=320, left_blocks=2, beam=3)
    a, rec = _run(loaded, cfg, wave, [1600])
    b, _ = _run(loaded, cfg, wave, [137, 5000, 1])  # chunking never changes a result
    assert a == b and a[-1][1]
    assert rec.state.ctx is not None and rec.state.offset > 8  # several blocks, context handed over


def test_process_batch_equals_one_by_one(model_dir):
    loaded = load_model_dir(model_dir)
    cfg = InferenceConfig(decoder="ctc", block_ms=320, left_blocks=2)
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(16000 * 2).astype(np.float32) * 0.1 for _ in range(3)]
    alone = [Recognizer(loaded, cfg) for _ in waves]
    together = [Recognizer(loaded, cfg) for _ in waves]
    for s in range(0, 32000, 2560):
        want = [rec.accept_waveform(w[s:s + 2560]) for rec, w in zip(alone, waves)]
        got = process_batch([(rec, w[s:s + 2560]) for rec, w in zip(together, waves)])
        assert [[r.text for r in x] for x in got] == [[r.text for r in x] for x in want]
    for a, b in zip(alone, together):
        for x, y in zip(a.state.ctx, b.state.ctx):
            assert torch.allclose(x, y, atol=1e-5)


def test_contextual_yaml_is_sar_yaml_with_the_contextual_encoder():
    conf = ROOT / "egs" / "default" / "conf"
    sar, ctx = yaml.safe_load((conf / "sar.yaml").read_text()), yaml.safe_load((conf / "contextual.yaml").read_text())
    assert ctx["model"]["encoder"].pop("kind") == "contextual_block"
    assert ctx["model"] == sar["model"] and ctx["data"] == sar["data"]
    assert "init" not in ctx and "init" in sar


def test_asr_train_runs_a_tiny_contextual_yaml(tts_corpus, tmp_path):
    """`asr train` on egs/default/conf/contextual.yaml with tiny sizes and the TTS utterances."""
    from asr.data import read_manifest

    rows = read_manifest(tts_corpus / "all.jsonl")
    train_tokenizer([r["text"] for r in rows] * 5, tmp_path / "tk", vocab_size=40)
    raw = yaml.safe_load((ROOT / "egs" / "default" / "conf" / "contextual.yaml").read_text())
    enc = raw["model"]["encoder"]
    enc.update(d_model=32, n_heads=2, n_layers=2, ff_mult=2, conv_kernel=5, subsampling_channels=16,
               train_block_sizes=[None, 4, 8], train_left_blocks=[None, 1])
    for head in (raw["model"]["decoder"], raw["model"]["sar"], raw["model"]["sar"]["lm"]):
        head.update(d_model=32, n_heads=2) if "d_model" in head else head.update(n_heads=2)
    raw["data"] = {"train": [str(tts_corpus / "all.jsonl")], "valid": str(tts_corpus / "all.jsonl"),
                   "tokenizer": str(tmp_path / "tk.model"), "batch_seconds": 6.0, "num_workers": 0}
    raw["optim"].update(max_steps=4, warmup_steps=2, ctc_warmup_steps=1, checkpoint_every=4, valid_every=4,
                        log_every=1, bf16=False)
    path = tmp_path / "contextual.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_experiment(path).model.encoder.kind == "contextual_block"
    exp = tmp_path / "exp"
    assert asr_main(["train", "--config", str(path), "--out", str(exp), "--no-progress"]) == 0
    assert asr_main(["export", "--exp", str(exp), "--out", str(tmp_path / "model")]) == 0
    loaded = load_model_dir(tmp_path / "model")
    assert isinstance(loaded.model.encoder, ContextualBlockEncoder)
    assert to_dict(loaded.config.model.encoder)["kind"] == "contextual_block"
    assert (exp / "valid.csv").read_text().count("\n") >= 2
    for decoder in ("sar", "bsbs"):  # `asr decode` scores it like any model (WER, RTF, latency)
        out = tmp_path / f"decode-{decoder}"
        assert asr_main(["decode", "--model", str(tmp_path / "model"), "--data", str(tts_corpus / "all.jsonl"),
                         "--decoder", decoder, "--block-ms", "320", "--max-utts", "2", "--out", str(out),
                         "--quiet", "--beam", "2"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["utterances"] == 2 and "wer" in summary
