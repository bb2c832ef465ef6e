"""The incremental attention-decoder scorer (self-attention keys/values cached per hypothesis, reset
when the memory grows) equals the scorer that runs every prefix whole at every step: scores in
float64 to rounding, and the same hypotheses from blockwise synchronous beam search (with and
without an external LM) on the tiny test model and, in a slow test, on the shipped default model.
The rotary angle table equals computing the angles each call, bit for bit."""

from pathlib import Path

import pytest
import torch

import asr.decode.bsbs as bsbs_module
from asr.attention.positions import RotaryEmbedding
from asr.decode.bsbs import joint_scorers
from asr.models import DecoderConfig, LMConfig, TransformerLM
from asr.models.decoder import AttentionDecoder, DecoderScorer, RecomputeDecoderScorer
from asr.models.io import load_model_dir
from asr.search import BlockwiseBeamSearch, BsbsConfig
from asr.search.scorer import Memory

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
if not CORPORA.is_dir():
    CORPORA = Path("/work/shared/corpora")


def test_rotary_table_equals_direct_angles():
    rot = RotaryEmbedding(16)
    x = torch.randn(3, 2, 5, 16)
    for start in (0, 7, 60, 300, 4093):  # within and past the first table, and past its cap
        direct = rot.phase(start, 5, x.device)
        want = torch.cat([x[..., :8] * direct.cos().float() - x[..., 8:] * direct.sin().float(),
                          x[..., :8] * direct.sin().float() + x[..., 8:] * direct.cos().float()], dim=-1)
        assert torch.equal(rot(x, start), want), start


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_incremental_scores_equal_whole_prefixes(n_layers):
    """A beam of 3 through a memory that grows, with rows reordered and duplicated by select_state
    (beam search), and a memory replaced by one with other frames: float64, to rounding."""
    torch.manual_seed(n_layers)
    dec = AttentionDecoder(40, 24, DecoderConfig(d_model=32, n_heads=4, n_layers=n_layers, dropout=0.0))
    dec = dec.double().eval()
    fast, ref = DecoderScorer(dec), RecomputeDecoderScorer(dec)
    enc = torch.randn(30, 24, dtype=torch.float64)
    memories = [enc[:8]] * 3 + [enc[:19]] * 2 + [enc[:30]] * 3 + [torch.randn(12, 24, dtype=torch.float64)] * 2
    prefixes = torch.full((1, 1), 2)
    state = fast.init_state(Memory(enc=memories[0]))
    for step, frames in enumerate(memories):
        memory = Memory(enc=frames)
        got, new = fast.score(prefixes, state, memory)
        want, _ = ref.score(prefixes, None, memory)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        index = torch.tensor([0, 0, 0]) if step == 0 else torch.tensor([2, 0, 0])
        token = torch.tensor([5 + step, 7, 9])
        state = fast.select_state(new, index, token)
        prefixes = torch.cat([prefixes[index], token[:, None]], dim=1)
        assert state.caches[0].length == prefixes.shape[1] - 1


def test_shared_prefix_recomputation_equals_whole_prefixes():
    """When the memory grows, the positions every hypothesis shares run once and the rest per row:
    the same scores as running every row whole (long shared prefixes, one row, identical rows)."""
    torch.manual_seed(0)
    dec = AttentionDecoder(40, 24, DecoderConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.0)).double().eval()
    fast, ref = DecoderScorer(dec), RecomputeDecoderScorer(dec)
    enc = torch.randn(20, 24, dtype=torch.float64)
    shared = torch.randint(3, 40, (1, 12))
    cases = [torch.cat([shared.expand(4, -1), torch.randint(3, 40, (4, 3))], dim=1),  # 13 shared, then apart
             torch.cat([shared[:, :5].expand(3, -1), torch.randint(3, 40, (3, 1))], dim=1),  # apart at the last
             shared[:, :7],  # one row
             shared.expand(3, -1).clone()]  # identical rows (all but the last position run once)
    for prefixes in cases:
        got, state = fast.score(prefixes, None, Memory(enc=enc))
        want, _ = ref.score(prefixes, None, Memory(enc=enc))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert [c.length for c in state.caches] == [prefixes.shape[1]] * 2 and state.caches[0].k.shape[0] == len(prefixes)
        step = torch.randint(3, 40, (len(prefixes),))  # the next step is incremental on those caches
        nxt = torch.cat([prefixes, step[:, None]], dim=1)
        got, _ = fast.score(nxt, fast.select_state(state, torch.arange(len(prefixes)), step), Memory(enc=enc))
        torch.testing.assert_close(got, ref.score(nxt, None, Memory(enc=enc))[0], rtol=0, atol=1e-12)


def _search(scorers, weights, enc, logp, block):
    search = BlockwiseBeamSearch(scorers, weights, BsbsConfig(beam_size=4, nbest=1, ctc_trigger=True))
    partials = [search.extend_block(enc[a:a + block], logp[a:a + block]).tokens
                for a in range(0, enc.shape[0], block)]
    return partials, search.finalize(), search.steps_backed_off


def _same_search(model, enc, logp, lm, block, atol):
    scorers, weights = joint_scorers(model, 0.3, lm, 0.5 if lm is not None else 0.0)
    fast = _search(scorers, weights, enc, logp, block)
    scorers, weights = joint_scorers(model, 0.3, lm, 0.5 if lm is not None else 0.0)
    scorers["decoder"] = RecomputeDecoderScorer(model.decoder)
    ref = _search(scorers, weights, enc, logp, block)
    assert fast[0] == ref[0] and fast[2] == ref[2]  # every partial, every backoff
    assert [h.tokens for h in fast[1]] == [h.tokens for h in ref[1]]
    for a, b in zip(fast[1], ref[1]):
        assert a.score == pytest.approx(b.score, abs=atol)
        assert a.scores == pytest.approx(b.scores, abs=atol)
    return fast[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tts_corpus):
    from asr.audio import load_audio
    from asr.data import read_manifest
    from asr.features import Fbank, FbankConfig

    model = load_model_dir(tiny_model_dir).model.eval()
    rows = read_manifest(tts_corpus / "all.jsonl")[:3]
    waves = [load_audio(r["audio"]) for r in rows]
    out = []
    with torch.no_grad():
        for w in waves:
            feats, lens = Fbank(FbankConfig())(w[None], torch.tensor([w.numel()]))
            enc, enc_lens = model.encode(feats, lens, 4, 2)
            out.append((enc[0, : enc_lens[0]], model.ctc_logp(enc)[0, : enc_lens[0]]))
    return model, out


@pytest.mark.parametrize("with_lm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block", [4, 8])
def test_bsbs_on_the_tiny_model_equals_the_reference(tiny, with_lm, dtype, block):
    model, utts = tiny
    model = model.to(dtype)
    torch.manual_seed(0)
    lm = None
    if with_lm:
        lm = TransformerLM(model.ctc.out_features, LMConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.0))
        lm = lm.to(dtype).eval()
    found = False
    for enc, logp in utts:
        with torch.no_grad():
            nbest = _same_search(model, enc.to(dtype), logp.to(dtype), lm, block,
                                 atol=1e-4 if dtype == torch.float32 else 1e-9)
        found |= bool(nbest and nbest[0].tokens)
    assert found  # the searches emitted something to compare
    model.float()


@pytest.mark.slow
@pytest.mark.skipif(not (CORPORA / "speechocean762" / "dev").is_dir(), reason="shared/corpora not found")
@pytest.mark.parametrize("lm_dir", [None, "models/default/lm"])
def test_bsbs_on_the_default_model_equals_the_reference(monkeypatch, lm_dir):
    """10 speechocean762 dev utterances through the recognizer, 640 ms blocks, beam 10: the same
    finals, and the same n-best scores to float32 rounding."""
    from asr.audio import load_audio
    from asr.data.kaldi import read_kaldi_dir
    from asr.inference import InferenceConfig, load_inference
    from streaming import Recognizer

    cfg = InferenceConfig(decoder="bsbs", block_ms=640, beam=10, lm=None if lm_dir is None else str(REPO / lm_dir),
                          lm_weight=0.4 if lm_dir else 0.0)
    loaded, lm = load_inference(cfg)
    rows = sorted(read_kaldi_dir(CORPORA / "speechocean762" / "dev", progress=False).rows, key=lambda r: r["id"])
    waves = [load_audio(r["audio"]) for r in rows[:10]]
    finals = []
    finalize = BlockwiseBeamSearch.finalize

    def recorded(self, *args):
        nbest = finalize(self, *args)
        finals.append([(h.tokens, h.score, h.scores) for h in nbest])
        return nbest

    monkeypatch.setattr(BlockwiseBeamSearch, "finalize", recorded)

    def decode(scorer_class):
        monkeypatch.setattr(bsbs_module, "DecoderScorer", scorer_class)
        finals.clear()
        texts = []
        for w in waves:
            rec = Recognizer(loaded, cfg, lm=lm)
            results = [r for s in range(0, w.numel(), 1600) for r in rec.accept_waveform(w[s:s + 1600].numpy())]
            texts.append([r.text for r in results + rec.finalize() if r.is_final])
        return texts, list(finals)

    fast, ref = decode(DecoderScorer), decode(RecomputeDecoderScorer)
    assert fast[0] == ref[0]
    assert [[h[0] for h in nb] for nb in fast[1]] == [[h[0] for h in nb] for nb in ref[1]]
    for nb_fast, nb_ref in zip(fast[1], ref[1]):
        for a, b in zip(nb_fast, nb_ref):
            assert a[1] == pytest.approx(b[1], abs=1e-4) and a[2] == pytest.approx(b[2], abs=1e-4)
