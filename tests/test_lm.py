"""The transformer LM: text-only training (overfitting, exact resume, the LM directory), the
incremental scorer against a full forward, SAR LM initialisation, and shallow fusion in decoding."""

import csv
import dataclasses

import pytest
import torch
import yaml

from blockasr.cli import main as asr_main
from asr.encoder import EncoderConfig
from asr.features import FbankConfig
from asr.models import DecoderConfig, LMConfig, LMScorer, ModelConfig, SARConfig, TransformerLM, build_model
from asr.models.io import export_model_dir, load_model_dir
from asr.models.lm_io import init_sar_lm, load_lm_dir, save_lm_dir
from asr.search.scorer import Memory
from asr.tokenizer import SOS_EOS, train_tokenizer
from asr.train.lm import LMDataConfig, LMExperimentConfig, LMOptimConfig, LMTrainer, perplexity, read_text
from asr.inference import InferenceConfig
from streaming import EndpointConfig, Recognizer

SENTENCES = ["HELLO WORLD", "GOOD MORNING TO YOU", "THE CAT SAT ON THE MAT", "SEVEN EIGHT NINE",
             "OPEN THE DOOR PLEASE", "WHERE IS MY BOOK"]
TINY_LM = {"d_model": 32, "n_heads": 2, "n_layers": 1, "dropout": 0.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Training text in lower case with punctuation (the reader normalises it) and a tokenizer."""
    root = tmp_path_factory.mktemp("lm")
    (root / "train.txt").write_text("".join(f"{s.lower()}, said he.\n" if i == 0 else f"{s.lower()}!\n"
                                            for i, s in enumerate(SENTENCES)))
    (root / "valid.txt").write_text("".join(f"utt{i} {s}\n" for i, s in enumerate(SENTENCES[1:])))
    tok = train_tokenizer(SENTENCES * 5 + ["SAID HE"], root / "tok", vocab_size=40)
    return root, tok


@pytest.fixture(scope="module")
def trained_lm(corpus):
    """An LM overfitted on SENTENCES with ``asr train-lm`` (a few seconds)."""
    root, tok = corpus
    conf = root / "lm.yaml"
    conf.write_text(yaml.safe_dump({
        "lm": TINY_LM, "data": {"batch_tokens": 64},
        "optim": {"lr": 5e-3, "warmup_steps": 10, "max_steps": 200, "valid_every": 50, "log_every": 10,
                  "checkpoint_every": 100}}))
    (root / "plain.txt").write_text("\n".join(SENTENCES) + "\n")
    assert asr_main(["train-lm", "--text", str(root / "plain.txt"), "--valid", str(root / "plain.txt"),
                     "--tokenizer", str(tok.path), "--config", str(conf), "--out", str(root / "exp"),
                     "--no-progress"]) == 0
    return root / "exp"


def _config(root, tok, **optim) -> LMExperimentConfig:
    return LMExperimentConfig(
        lm=LMConfig(d_model=32, n_heads=2, n_layers=2, dropout=0.1),
        data=LMDataConfig(train=(str(root / "train.txt"),), tokenizer=str(tok.path), valid_lines=2, batch_tokens=48),
        optim=LMOptimConfig(**{"lr": 3e-3, "warmup_steps": 3, "log_every": 1, "valid_every": 4, "seed": 5, **optim}))


def _greedy(lm: TransformerLM, prompt: list[int], max_len: int = 40) -> list[int]:
    ids = [SOS_EOS] + prompt
    while len(ids) < max_len:
        nxt = int(lm.out(lm.hidden(torch.tensor([ids])))[0, -1].argmax())
        if nxt == SOS_EOS:
            break
        ids.append(nxt)
    return ids[1:]


def test_read_text_normalises(corpus):
    root, _ = corpus
    assert read_text([root / "train.txt"])[:2] == ["HELLO WORLD SAID HE", "GOOD MORNING TO YOU"]
    assert read_text([root / "valid.txt"], kaldi_ids=True) == SENTENCES[1:]


def test_overfits_and_writes_lm_dir(trained_lm, corpus):
    _, tok = corpus
    with open(trained_lm / "valid.csv") as f:
        ppl = [float(r["ppl"]) for r in csv.DictReader(f)]
    with open(trained_lm / "train.csv") as f:
        first_train_ppl = float(next(csv.DictReader(f))["ppl"])
    assert first_train_ppl > 20 and ppl[-1] < first_train_ppl / 10, (first_train_ppl, ppl)
    assert (trained_lm / "curves.png").is_file()
    loaded = load_lm_dir(trained_lm / "lm", tokenizer=tok)
    assert loaded.config.provenance["steps"] == 200
    seqs = [tok.encode(s) for s in SENTENCES]
    assert perplexity(loaded.lm, seqs)["ppl"] == pytest.approx(ppl[-1], rel=1e-4)
    for s in seqs:  # prompted with the shortest prefix that tells the sentences apart
        k = next(k for k in range(1, len(s)) if sum(t[:k] == s[:k] for t in seqs) == 1)
        assert tok.decode(_greedy(loaded.lm, s[:k])) == tok.decode(s)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_scorer_equals_full_forward(n_layers):
    """Incremental scoring with KV caches (and beam reordering) == teacher-forced full forward."""
    torch.manual_seed(n_layers)
    lm = TransformerLM(23, LMConfig(d_model=32, n_heads=4, n_layers=n_layers, dropout=0.0)).double().eval()
    scorer = LMScorer(lm)
    memory = Memory(ctc_logp=torch.zeros(1, 23))
    prefixes = torch.tensor([[SOS_EOS]])
    state = scorer.init_state(memory)
    gen = torch.Generator().manual_seed(0)
    for step in range(7):
        logp, new = scorer.score(prefixes, state, memory)
        with torch.no_grad():
            full = lm.out(lm.hidden(prefixes))[:, -1].log_softmax(-1)
        torch.testing.assert_close(logp.double(), full, atol=1e-6, rtol=0)  # the scorer returns float32
        n = 1 if step == 0 else len(prefixes)
        index = torch.randint(0, n, (4,), generator=gen)  # beam reordering with duplicates
        token = torch.randint(3, 23, (4,), generator=gen)
        state = scorer.select_state(new, index, token)
        prefixes = torch.cat([prefixes[index], token[:, None]], dim=1)


def test_scorer_hidden_float64_exact():
    """The cached step's hidden states equal the full forward's to float64 rounding."""
    torch.manual_seed(0)
    lm = TransformerLM(17, LMConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.0)).double().eval()
    tokens = torch.randint(3, 17, (3, 9))
    caches = lm.empty_caches(3, torch.device("cpu"))
    with torch.no_grad():
        full = lm.hidden(tokens)
        for j in range(tokens.shape[1]):
            h, caches = lm.step(tokens[:, j], caches)
            torch.testing.assert_close(h, full[:, j], atol=1e-12, rtol=0)


def test_perplexity_is_the_scorer_sum(corpus):
    """perplexity() (batched, padded) == exp of the mean of incremental scorer log-probs, <eos> included."""
    _, tok = corpus
    torch.manual_seed(0)
    lm = TransformerLM(tok.vocab_size, LMConfig(**TINY_LM))
    seqs = [tok.encode(s) for s in SENTENCES]
    scorer, total, count = LMScorer(lm), 0.0, 0
    memory = Memory(ctc_logp=torch.zeros(1, tok.vocab_size))
    for s in seqs:
        state, prefix = scorer.init_state(memory), torch.tensor([[SOS_EOS]])
        for t in s + [SOS_EOS]:
            logp, state = scorer.score(prefix, state, memory)
            total -= float(logp[0, t])
            count += 1
            state = scorer.select_state(state, torch.tensor([0]), torch.tensor([t]))
            prefix = torch.cat([prefix, torch.tensor([[t]])], dim=1)
    result = perplexity(lm, seqs, batch_tokens=40)
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)


def test_resume_is_exact(corpus, tmp_path):
    root, tok = corpus
    cfg = _config(root, tok, max_steps=8, checkpoint_every=4)
    straight = LMTrainer(cfg, tmp_path / "straight", device="cpu", progress=False)
    straight.train()
    half = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=4))
    LMTrainer(half, tmp_path / "resumed", device="cpu", progress=False).train()  # "killed" after step 4
    resumed = LMTrainer(cfg, tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.step == 4
    resumed.train()
    assert straight.epoch >= 2  # the run crossed epoch boundaries

    def losses(d):
        with open(d / "train.csv") as f:
            return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]

    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert [s for s, _ in losses(tmp_path / "straight")] == list(range(1, 9))
    for (k, a), b in zip(straight.lm.state_dict().items(), resumed.lm.state_dict().values()):
        assert torch.equal(a, b), k


def _sar_model(vocab_size: int, lm: LMConfig):
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=0.0)
    return build_model(ModelConfig(vocab_size=vocab_size, kind="sar", encoder=enc,
                                   sar=SARConfig(lm=lm, fusion_layers=1, dropout=0.0)))


def test_sar_lm_init_copies_and_checks(corpus, tmp_path):
    _, tok = corpus
    torch.manual_seed(0)
    lm = TransformerLM(tok.vocab_size, LMConfig(**TINY_LM))
    save_lm_dir(lm, tok.path, tmp_path / "lm")
    model = _sar_model(tok.vocab_size, LMConfig(**{**TINY_LM, "dropout": 0.1}))  # dropout may differ
    assert not torch.equal(model.sar.lm.embed.weight, lm.embed.weight)
    init_sar_lm(model, tmp_path / "lm", tok)
    for k, v in lm.state_dict().items():
        assert torch.equal(model.sar.lm.state_dict()[k], v), k

    wider = _sar_model(tok.vocab_size, LMConfig(**{**TINY_LM, "d_model": 48, "n_layers": 2}))
    with pytest.raises(ValueError, match=r"d_model: model 48 vs LM 32; n_layers: model 2 vs LM 1"):
        init_sar_lm(wider, tmp_path / "lm", tok)
    other = train_tokenizer(SENTENCES * 5, tmp_path / "other", vocab_size=30)
    with pytest.raises(ValueError, match="tokenizer .* differs"):
        init_sar_lm(_sar_model(other.vocab_size, LMConfig(**TINY_LM)), tmp_path / "lm", other)
    ctc_only = build_model(ModelConfig(vocab_size=tok.vocab_size, kind="ctc", encoder=EncoderConfig.tiny()))
    with pytest.raises(ValueError, match="no SAR decoder"):
        init_sar_lm(ctc_only, tmp_path / "lm", tok)


def test_trainer_lm_init_fresh_run_only(tts_corpus, tmp_path):
    """``lm_init`` in the experiment YAML initialises model.sar.lm on a fresh run, not on resume."""
    from asr.data import read_manifest
    from asr.train import Trainer, load_experiment

    rows = read_manifest(tts_corpus / "all.jsonl")
    tok = train_tokenizer([r["text"] for r in rows] * 5, tmp_path / "tk", vocab_size=40)
    torch.manual_seed(1)
    lm = TransformerLM(tok.vocab_size, LMConfig(**TINY_LM))
    save_lm_dir(lm, tok.path, tmp_path / "lmdir")
    exp = {"model": {"kind": "sar", "encoder": {"d_model": 32, "n_heads": 2, "n_layers": 1, "conv_kernel": 5,
                                                "subsampling_channels": 16},
                     "sar": {"lm": TINY_LM, "fusion_layers": 1, "n_heads": 2}},
           "data": {"train": [str(tts_corpus / "all.jsonl")], "tokenizer": "tk.model", "batch_seconds": 4.0,
                    "num_workers": 0},
           "optim": {"max_steps": 2, "checkpoint_every": 2, "warmup_steps": 1},
           "lm_init": "lmdir"}  # relative to the YAML file
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    cfg = load_experiment(tmp_path / "exp.yaml")
    trainer = Trainer(cfg, tmp_path / "exp", device="cpu", progress=False)
    for k, v in lm.state_dict().items():
        assert torch.equal(trainer.model.sar.lm.state_dict()[k], v), k
    trainer.train()
    trained = {k: v.clone() for k, v in trainer.model.sar.lm.state_dict().items()}
    assert not torch.equal(trained["embed.weight"], lm.embed.weight)
    resumed = Trainer(cfg, tmp_path / "exp", device="cpu", progress=False)
    for k, v in trained.items():
        assert torch.equal(resumed.model.sar.lm.state_dict()[k], v), k

    exp["model"]["sar"]["lm"] = {**TINY_LM, "d_model": 64}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(ValueError, match="does not fit model.sar.lm .*d_model: model 64 vs LM 32"):
        Trainer(load_experiment(tmp_path / "bad.yaml"), tmp_path / "bad", device="cpu", progress=False)


# ---------------------------------------------------------------------------------- shallow fusion
@pytest.fixture(scope="module")
def joint_model_dir(corpus, tmp_path_factory):
    """An untrained tiny CTC + attention-decoder model directory (the LM makes the difference)."""
    _, tok = corpus
    torch.manual_seed(0)
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=0.0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, kind="joint", encoder=enc,
                      decoder=DecoderConfig(d_model=64, n_layers=1, dropout=0.0))
    return export_model_dir(build_model(cfg).state_dict(), cfg, FbankConfig(), tok.path,
                            tmp_path_factory.mktemp("joint") / "model")


def _recognise(loaded, wave, decoder, lm=None, lm_weight=0.0):
    cfg = InferenceConfig(decoder=decoder, block_ms=320, beam=4, lm_weight=lm_weight)
    rec = Recognizer(loaded, cfg, lm=lm, endpoint=EndpointConfig(None, None, None))
    results = []
    for s in range(0, wave.numel(), 4000):
        results += rec.accept_waveform(wave[s:s + 4000].numpy())
    return results + rec.finalize()


@pytest.mark.parametrize("decoder", ["bsbs", "offline"])
def test_shallow_fusion(joint_model_dir, trained_lm, speechlike, decoder):
    loaded = load_model_dir(joint_model_dir)
    lm = load_lm_dir(trained_lm / "lm", tokenizer=loaded.tokenizer).lm
    wave = torch.from_numpy(speechlike(3.0, 16000, 7))
    plain = _recognise(loaded, wave, decoder)
    assert _recognise(loaded, wave, decoder, lm, 0.0) == plain  # weight 0: exactly the same results
    fused = _recognise(loaded, wave, decoder, lm, 5.0)
    # the untrained acoustic model says nothing sensible; with a heavy LM weight the output becomes
    # text the LM finds likely (pieces of its training sentences)
    assert fused[-1].is_final and fused[-1].text != plain[-1].text
    nll = {name: perplexity(lm, [r.tokens])["loss"] for name, r in (("plain", plain[-1]), ("fused", fused[-1]))}
    assert nll["fused"] < 0.5 * nll["plain"], nll


def test_fusion_cli_and_errors(joint_model_dir, trained_lm, speechlike, tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, speechlike(1.2, 16000, 3), 16000)
    base = ["transcribe", str(wav), "--model", str(joint_model_dir), "--decoder", "bsbs", "--beam", "3"]
    assert asr_main(base) == 0
    plain = capsys.readouterr().out
    assert asr_main(base + ["--lm", str(trained_lm / "lm"), "--lm-weight", "0"]) == 0
    assert capsys.readouterr().out == plain
    assert asr_main(base + ["--lm", str(trained_lm / "lm"), "--lm-weight", "5"]) == 0
    assert capsys.readouterr().out != plain

    other = train_tokenizer(SENTENCES * 5, tmp_path / "other", vocab_size=30)
    save_lm_dir(TransformerLM(other.vocab_size, LMConfig(**TINY_LM)), other.path, tmp_path / "other_lm")
    assert asr_main(base + ["--lm", str(tmp_path / "other_lm")]) == 2
    assert "the LM's tokenizer" in capsys.readouterr().err
    assert asr_main(base + ["--lm-weight", "0.5"]) == 2
    assert "--lm-weight needs an LM: --lm DIR (here --lm auto" in capsys.readouterr().err  # the model has no lm/
    assert asr_main(base[:-4] + ["--decoder", "ctc", "--lm", str(trained_lm / "lm")]) == 2
    assert "bsbs and offline" in capsys.readouterr().err
