"""Blockwise synchronous beam search of many sessions in lockstep (asr.search.batched) equals each
session's own search: the same partial tokens after every block and the same final n-best."""

import dataclasses
import os
import sys

import pytest
import torch

from asr.decode import BsbsDecoder
from asr.inference import InferenceConfig
from asr.models.config import DecoderConfig, LMConfig
from asr.models.decoder import AttentionDecoder, DecoderScorer
from asr.models.lm import LMScorer, TransformerLM
from asr.search import BlockwiseBeamSearch, BsbsConfig, CTCPrefixScorer, ragged
from asr.search.batched import batch_signature, extend_blocks, finalize_searches
from streaming import Recognizer

sys.path.insert(0, os.path.dirname(__file__))
from test_batch_decode import _streams as batch_decode_streams  # noqa: E402

V, D, EOS = 12, 16, 2
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _peaky(tokens, frames_per_token, seed, noise=0.5):
    """CTC log-probs that clearly spell ``tokens``: one spike then blanks per token (float64)."""
    g = torch.Generator().manual_seed(seed)
    logits = noise * torch.randn(len(tokens) * frames_per_token, V, generator=g, dtype=torch.float64)
    logits[:, 0] += 4.0
    for k, tok in enumerate(tokens):
        logits[k * frames_per_token, tok] += 8.0
    logits[:, EOS] = -30.0
    return logits.log_softmax(-1)


@pytest.fixture(scope="module")
def modules():
    torch.manual_seed(0)
    decoder = AttentionDecoder(V, D, DecoderConfig(d_model=32, n_heads=2, n_layers=2, ff_mult=2, dropout=0.0))
    with torch.no_grad():
        decoder.out.bias[EOS] += 1.5  # hypotheses end now and then: beams shrink, block searches stop
    lm = TransformerLM(V, LMConfig(d_model=32, n_heads=2, n_layers=2, ff_mult=2, dropout=0.0))
    return decoder.double().eval(), lm.double().eval()


def _search(modules, with_lm: bool, cfg: BsbsConfig, device: str = "cpu") -> BlockwiseBeamSearch:
    decoder, lm = (m.to(device) for m in modules)
    scorers = {"decoder": DecoderScorer(decoder), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 0.7, "ctc": 0.3, "length_bonus": 0.2}
    if with_lm:
        scorers["lm"], weights["lm"] = LMScorer(lm), 0.3
    return BlockwiseBeamSearch(scorers, weights, cfg)


# session -> (tokens it spells, frames per token, first round, rounds whose block is empty, end_of_stream round)
SESSIONS = [
    ([3, 4, 5, 6, 7, 3, 4, 8, 9], 3, 0, (), None),
    ([5, 5, 6, 7], 4, 1, (3,), None),
    ([8, 9, 10, 11, 3, 4, 5], 2, 0, (2,), 4),
    ([4, 3, 4, 3, 4, 3, 10], 3, 3, (), None),  # repeats: the repetition test and the trigger at work
    ([11, 10, 9], 5, 5, (), None),  # starts late: its first block while the others are far along
    ([6], 2, 2, (), None),  # a short one: done after its first block
]
BLOCK = 4


def _rounds(seed_base: int, device: str = "cpu"):
    """Each round's block per session: None (not in this round) or (enc, ctc_logp), possibly empty."""
    data = []
    for k, (tokens, fpt, first, empty, _) in enumerate(SESSIONS):
        ctc = _peaky(tokens, fpt, seed=seed_base + k)
        enc = torch.randn(ctc.shape[0], D, generator=torch.Generator().manual_seed(seed_base + 50 + k),
                          dtype=torch.float64)
        data.append((enc.to(device), ctc.to(device)))
    rounds, pos = [], [0] * len(SESSIONS)
    for r in range(20):
        row = []
        for k, (_, _, first, empty, _) in enumerate(SESSIONS):
            enc, ctc = data[k]
            if r < first or pos[k] >= enc.shape[0]:
                row.append(None)
            elif r in empty:
                row.append((enc[:0], ctc[:0]))
            else:
                row.append((enc[pos[k]:pos[k] + BLOCK], ctc[pos[k]:pos[k] + BLOCK]))
                pos[k] += BLOCK
        if all(x is None for x in row):
            break
        rounds.append(row)
    return rounds


def _same_hyps(got, want):
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
    for g, w in zip(got, want):
        assert g.scores.keys() == w.scores.keys()
        assert [g.scores[k] for k in g.scores] == pytest.approx([w.scores[k] for k in w.scores], abs=1e-5)


CONFIGS = {
    "trigger": BsbsConfig(beam_size=4, nbest=1, ctc_trigger=True),
    "paper": BsbsConfig(beam_size=4, nbest=None, ctc_trigger=False),
    "no-backoff": BsbsConfig(beam_size=3, nbest=2, ctc_trigger=True, backoff=False, end_detect=False),
    "slack": BsbsConfig(beam_size=5, nbest=1, ctc_trigger=True, trigger_slack=1, repetition_test=False),
    "short": BsbsConfig(beam_size=4, nbest=None, ctc_trigger=False, maxlen_ratio=0.3),  # <eos> forced at max length
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_lm", [False, True])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_lockstep_equals_each_session_alone(modules, with_lm, config, device, monkeypatch):
    monkeypatch.setattr(ragged, "SPARE", 1)  # the self-attention caches grow during the searches
    cfg = CONFIGS[config]
    alone = [_search(modules, with_lm, cfg, device) for _ in SESSIONS]
    together = [_search(modules, with_lm, cfg, device) for _ in SESSIONS]
    assert len({batch_signature(s) for s in together}) == 1 and batch_signature(together[0]) is not None
    for r, row in enumerate(_rounds(seed_base=10 * len(config), device=device)):
        for k, (*_, eos_round) in enumerate(SESSIONS):
            if eos_round == r:
                alone[k].end_of_stream()
                together[k].end_of_stream()
        idx = [k for k, x in enumerate(row) if x is not None]
        want = [alone[k].extend_block(*row[k]) for k in idx]
        got = extend_blocks([together[k] for k in idx], [row[k][0] for k in idx], [row[k][1] for k in idx])
        for k, g, w in zip(idx, got, want):
            assert g.tokens == w.tokens, (r, k)
            assert g.score == pytest.approx(w.score, abs=1e-5)
            a, b = alone[k].beam, together[k].beam
            if a is not None:
                assert b.tokens.tolist() == a.tokens.tolist()
                assert b.scores.tolist() == pytest.approx(a.scores.tolist(), abs=1e-5)
    assert [a.steps_backed_off for a in alone] == [b.steps_backed_off for b in together]
    want = [a.finalize() for a in alone]
    got = finalize_searches(together)
    for g, w in zip(got, want):
        _same_hyps(g, w)
    assert any(len(w) > 1 for w in want) or cfg.nbest == 1


def test_a_session_may_go_on_alone_after_a_batched_block_and_back(modules):
    """The beams that the lockstep hands back (CTC states, LM caches) serve the per-session search,
    and the reverse."""
    cfg = CONFIGS["trigger"]
    rounds = _rounds(seed_base=3)
    alone = [_search(modules, True, cfg) for _ in SESSIONS]
    mixed = [_search(modules, True, cfg) for _ in SESSIONS]
    for r, row in enumerate(rounds):
        idx = [k for k, x in enumerate(row) if x is not None and x[0].shape[0]]
        want = [alone[k].extend_block(*row[k]) for k in idx]
        if r % 2:
            got = [mixed[k].extend_block(*row[k]) for k in idx]
        else:  # with the per-frame labels on the host, as the recognizer hands them over
            got = extend_blocks([mixed[k] for k in idx], [row[k][0] for k in idx], [row[k][1] for k in idx],
                                [row[k][1].argmax(-1).tolist() for k in idx])
        assert [g.tokens for g in got] == [w.tokens for w in want]
        assert [m.ctc_tokens for m in mixed] == [a.ctc_tokens for a in alone]
    for g, w in zip(finalize_searches(mixed), [a.finalize() for a in alone]):
        _same_hyps(g, w)


def test_sessions_that_cannot_share_a_lockstep_have_no_signature(modules):
    decoder, lm = modules
    bounded = TransformerLM(V, LMConfig(d_model=32, n_heads=2, n_layers=1, dropout=0.0, max_context=4)).double()
    search = BlockwiseBeamSearch({"decoder": DecoderScorer(decoder), "ctc": CTCPrefixScorer(),
                                  "lm": LMScorer(bounded)}, {"decoder": 0.7, "ctc": 0.3, "lm": 0.2})
    assert batch_signature(search) is None
    a, b = _search(modules, True, CONFIGS["trigger"]), _search(modules, True, CONFIGS["paper"])
    assert batch_signature(a) != batch_signature(b)
    block = torch.zeros(4, D, dtype=torch.float64), _peaky([3], 4, seed=0)
    with pytest.raises(ValueError, match="cannot run in one lockstep"):
        extend_blocks([a, b], [block[0]] * 2, [block[1]] * 2)


# -- through the recognizer --------------------------------------------------------------------------

def _streams(loaded, cfg, waves, batched, sizes, begin, lm=None):
    return batch_decode_streams(loaded, cfg, waves, batched, sizes, begin, lm, end_batched=True)


@pytest.mark.parametrize("block_ms,with_lm", [(160, False), (320, False), (320, True)])
def test_process_batch_bsbs_batched_equals_per_stream(loaded, rows, block_ms, with_lm):
    """Streams of different lengths, starting at different passes, fed in chunks of different sizes
    (segments end at endpoints too): the lockstep gives each stream the results it gets alone."""
    from asr.audio import load_audio

    waves = [load_audio(r["audio"]).numpy() for r in rows[:5]]
    waves[3] = waves[3][:9000]  # a short one
    sizes, begin = [5120, 3000, 7000, 2500, 4000], [0, 1, 0, 2, 4]
    lm = None
    if with_lm:  # a random LM of the model's vocabulary: only the equality is checked
        torch.manual_seed(1)
        lm = TransformerLM(loaded.tokenizer.vocab_size, LMConfig(d_model=32, n_heads=2, n_layers=2, dropout=0.0)).eval()
    cfg = InferenceConfig(decoder="bsbs", block_ms=block_ms, lm_weight=0.3 if with_lm else 0.0)
    want = _streams(loaded, cfg, waves, False, sizes, begin, lm)
    got = _streams(loaded, cfg, waves, True, sizes, begin, lm)
    assert got == want
    assert all(res and res[-1][1] for res in got) and any(res[-1][0] for res in got)


def test_bsbs_streams_share_a_batch_key_unless_they_carry_session_context(loaded):
    cfg = InferenceConfig(decoder="bsbs", block_ms=320)
    a, b = Recognizer(loaded, cfg), Recognizer(loaded, cfg)
    assert a.decoder.batch_key() == b.decoder.batch_key()
    c = Recognizer(loaded, dataclasses.replace(cfg, beam=3))
    assert c.decoder.batch_key() != a.decoder.batch_key()


def test_bsbs_decoders_of_different_settings_in_one_call_are_grouped(loaded):
    """accept_blocks / finalize_many over decoders of two settings (and an empty block) equal each
    decoder's accept_block / finalize."""
    model = loaded.model
    g = torch.Generator().manual_seed(0)
    encs = [torch.randn(n, model.decoder.layers[0].cross_attn.k_proj.in_features, generator=g) for n in (8, 0, 8, 5)]
    logps = [model.ctc_logp(e) for e in encs]
    make = [lambda: BsbsDecoder(model, beam=4), lambda: BsbsDecoder(model, beam=3)]
    alone = [make[i % 2]() for i in range(4)]
    together = [make[i % 2]() for i in range(4)]
    for _ in range(3):
        for d, e, lp in zip(alone, encs, logps):
            d.accept_block(e, lp)
        BsbsDecoder.accept_blocks(together, encs, logps)
        assert [d.partial() for d in together] == [d.partial() for d in alone]
    assert BsbsDecoder.finalize_many(together) == [d.finalize() for d in alone]
