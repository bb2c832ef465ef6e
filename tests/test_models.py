"""Models: overfitting synthetic speech, the SAR no-leak property, exact resume of training."""

import dataclasses
import json

import pytest
import torch

from asr.data import AsrDataset, collate, read_manifest
from asr.encoder import EncoderConfig
from asr.features import CmvnAccumulator, Fbank, FbankConfig
from asr.models import DecoderConfig, LMConfig, ModelConfig, SARConfig, build_model, context_counts
from asr.models.losses import add_sos_eos
from asr.tokenizer import SOS_EOS, train_tokenizer
from asr.train.validate import greedy_ctc_texts


def tiny_config(kind: str, vocab_size: int, dropout: float = 0.0) -> ModelConfig:
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=dropout, train_block_sizes=(None, 4),
                              train_left_blocks=(None, 2))
    dec = DecoderConfig(d_model=64, n_layers=1, dropout=dropout, label_smoothing=0.0)
    sar = SARConfig(lm=LMConfig(d_model=64, n_layers=1, dropout=dropout), fusion_layers=1, dropout=dropout)
    return ModelConfig(vocab_size=vocab_size, kind=kind, encoder=enc, decoder=dec if kind == "joint" else None,
                       sar=sar if kind == "sar" else None)


@pytest.fixture(scope="module")
def batch(tts_corpus):
    rows = read_manifest(tts_corpus / "all.jsonl")[:4]
    tok = train_tokenizer([r["text"] for r in rows] * 5, tts_corpus / "tk4", vocab_size=40)
    b = collate([AsrDataset(rows, tok)[i] for i in range(len(rows))])
    feats, feat_lens = Fbank(FbankConfig())(b.waves, b.wave_lens)
    acc = CmvnAccumulator()
    for f, n in zip(feats, feat_lens):
        acc.add(f[:n])
    return tok, rows, feats, feat_lens, b.tokens, b.token_lens, acc.result()


_OVERFITTED: dict[str, tuple] = {}


def _overfit(batch, kind):
    """A tiny model of ``kind`` trained 250 steps on the 4 utterances (once per module), with its
    first and last total loss."""
    if kind not in _OVERFITTED:
        tok, rows, feats, feat_lens, tokens, token_lens, cmvn = batch
        torch.manual_seed(0)
        model = build_model(tiny_config(kind, tok.vocab_size))
        model.cmvn.load_state_dict(cmvn.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        first = last = None
        for _ in range(250):
            block_size, left_blocks = model.encoder.sample_block_config(gen)
            losses = model(feats, feat_lens, tokens, token_lens, block_size, left_blocks)
            opt.zero_grad()
            losses.total.backward()
            opt.step()
            first = first if first is not None else float(losses.total.detach())
            last = float(losses.total.detach())
        _OVERFITTED[kind] = (model.eval(), first, last)
    return _OVERFITTED[kind]


@pytest.mark.parametrize("kind", ["ctc", "joint", "sar"])
def test_overfits_synthetic_speech(batch, kind):
    """Every model kind trains: its total loss falls tenfold on 4 utterances."""
    _, first, last = _overfit(batch, kind)
    assert last <= 0.1 * first, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ctc", "joint", "sar"])
def test_overfit_model_decodes_its_transcripts(batch, kind):
    """Model quality, so slow: the overfitted model's greedy CTC (full context and blocks), greedy
    attention decoding and teacher-forced SAR logits give the transcripts (this passes or fails with
    the espeak-ng version and the machine's numerics)."""
    tok, rows, feats, feat_lens, tokens, token_lens, cmvn = batch
    model, _, _ = _overfit(batch, kind)
    with torch.no_grad():
        for block_size in (None, 4):
            enc, enc_lens = model.encode(feats, feat_lens, block_size, 2 if block_size else None)
            assert greedy_ctc_texts(model.ctc_logp(enc), enc_lens, tok) == [r["text"] for r in rows]
        if kind == "joint":  # attention decoder, greedy: argmax until <eos>
            for b, row in enumerate(rows):
                ids = [SOS_EOS]
                while len(ids) < 40:
                    logits = model.decoder.logits(torch.tensor([ids]), enc[b:b + 1, : enc_lens[b]], None)
                    nxt = int(logits[0, -1].argmax())
                    if nxt == SOS_EOS:
                        break
                    ids.append(nxt)
                assert tok.decode(ids[1:]) == row["text"]
        if kind == "sar":  # teacher-forced fused logits decode the transcripts too
            from asr.models.model import _align

            frames = _align(model.ctc_logp(enc), enc_lens, tokens, token_lens)
            logits = model.sar(enc, enc_lens, tokens, token_lens, frames, 4)
            assert greedy_ctc_texts(logits.log_softmax(-1), enc_lens, tok) == [r["text"] for r in rows]


def test_context_counts_example():
    counts = context_counts(torch.tensor([[0, 3, 4]]), torch.tensor([3]), 6, 2)
    assert counts.tolist() == [[0, 0, 1, 1, 2, 2]]
    assert context_counts(torch.tensor([[0, 3, 4]]), torch.tensor([3]), 6, None).tolist() == [[0] * 6]


@pytest.mark.parametrize("block_size", [2, 4])
def test_sar_no_leak(block_size):
    """Changing tokens aligned to block b or later never changes the fused logits of block b."""
    torch.manual_seed(0)
    model = build_model(tiny_config("sar", 30)).eval()
    T, K = 16, 6
    enc = torch.randn(1, T, model.encoder.output_dim)
    enc_lens = torch.tensor([T])
    frames = torch.tensor([[1, 3, 6, 7, 10, 14]])
    tokens = torch.randint(3, 30, (1, K))
    base = model.sar(enc, enc_lens, tokens, torch.tensor([K]), frames, block_size)
    blocks = frames[0] // block_size
    for b in range(T // block_size):
        changed = tokens.clone()
        later = blocks >= b
        changed[0, later] = (changed[0, later] - 3 + 1) % 27 + 3
        out = model.sar(enc, enc_lens, changed, torch.tensor([K]), frames, block_size)
        sl = slice(b * block_size, (b + 1) * block_size)
        assert torch.allclose(out[:, sl], base[:, sl], atol=1e-6), b
        visible = later & (blocks < T // block_size - 1)  # a token in block c is seen from block c + 1
        if visible.any():  # the mask is not dead: the change shows up after its block
            first = int(blocks[visible].min()) + 1
            assert not torch.allclose(out[:, first * block_size:], base[:, first * block_size:])


def test_add_sos_eos():
    inputs, targets = add_sos_eos(torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([3, 1]))
    assert inputs.tolist() == [[2, 5, 6, 7], [2, 8, 2, 2]]
    assert targets.tolist() == [[5, 6, 7, 2], [8, 2, -100, -100]]


def test_decoder_scorer_cached_memory_equals_plain_logits():
    """The scorer projects the memory once and extends it over new frames: its scores equal the
    decoder's plain forward of every hypothesis against the whole memory (float64), for a memory
    that grows block by block and for one that is not an extension of the cached one."""
    from asr.models import AttentionDecoder, DecoderScorer
    from asr.search.scorer import Memory

    torch.manual_seed(0)
    dec = AttentionDecoder(40, 24, DecoderConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.0)).double().eval()
    scorer = DecoderScorer(dec)
    enc = torch.randn(30, 24, dtype=torch.float64)
    prefixes = torch.tensor([[1, 5, 7], [1, 5, 9], [1, 3, 3]])
    for memory in (enc[:8], enc[:8], enc[:19], enc[:30], torch.randn(12, 24, dtype=torch.float64)):
        got, _ = scorer.score(prefixes, None, Memory(enc=memory))
        with torch.no_grad():
            want = dec.logits(prefixes, memory[None].expand(3, -1, -1), None)[:, -1].float().log_softmax(-1)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert scorer._enc.shape[0] == memory.shape[0]
