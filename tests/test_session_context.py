"""Session context in recognition (``--session-context N``): the finals of a stream's earlier segments
carried into the next segment's LM fusion (bsbs, offline) or SAR label context.

Equivalences: the first segment decodes exactly as without context; the second segment's search
equals one whose LM reads the concatenated text ``<s> seg_1 <s> prefix`` in one full pass; the SAR
label context equals the LM subnetwork over ``<sos> c_1 .. c_N``; batched SAR streams with different
carried contexts equal each stream alone. Small random-weight models, CPU."""

import argparse
import dataclasses

import numpy as np
import pytest
import torch

from asr.decode import build_decoder
from asr.decode.bsbs import BsbsDecoder, joint_scorers
from asr.decode.offline import OfflineDecoder, offline_decode
from asr.decode.sar import SarGreedyDecoder
from asr.encoder import EncoderConfig
from asr.inference import InferenceConfig, SettingsError, add_inference_arguments, inference_config_from_args
from asr.models import DecoderConfig, LMConfig, ModelConfig, SARConfig, TransformerLM, build_model
from asr.models.lm_session import SessionContextConfig
from asr.search import BeamSearch, BeamSearchConfig, BlockwiseBeamSearch, BsbsConfig
from asr.search.scorer import SOS_EOS, Memory

V = 23


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    enc = dataclasses.replace(EncoderConfig.tiny(), dropout=0.0)
    sar = SARConfig(lm=LMConfig(d_model=32, n_heads=4, n_layers=1, dropout=0.0), fusion_layers=1, n_heads=4,
                    dropout=0.0)
    return build_model(ModelConfig(vocab_size=V, kind="sar", encoder=enc, sar=sar,
                                   decoder=DecoderConfig(d_model=32, n_layers=1, dropout=0.0))).eval()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(1)
    return TransformerLM(V, LMConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.0)).eval()


def _segment(model, seed, frames=12):
    """Encoder frames (T, D) and CTC log-probs (T, V) of one segment of random features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        enc, lens = model.encode(torch.randn(1, 4 * frames + 3, 80, generator=g), torch.tensor([4 * frames + 3]))
        enc = enc[0, : int(lens[0])]
        return enc, model.ctc_logp(enc)


def _feed(decoder, enc, logp, block=4):
    for s in range(0, enc.shape[0], block):
        decoder.accept_block(enc[s:s + block], logp[s:s + block])
    return decoder.finalize()


class ConcatLMScorer:
    """Reference LM scorer without caches: each prefix is scored after ``context`` by one full pass
    over the concatenated tokens (``<s> seg_1 .. <s> prefix``)."""

    def __init__(self, lm, context):
        self.lm, self.context = lm, torch.tensor(context)

    def init_state(self, memory):
        return None

    @torch.no_grad()
    def score(self, prefixes, states, memory):
        x = torch.cat([self.context.expand(prefixes.shape[0], -1), prefixes], 1)
        return self.lm.out(self.lm.hidden(x)[:, -1]).float().log_softmax(-1), None

    def select_state(self, states, index, token):
        return None


# ----------------------------------------------------------------------------- LM fusion
def test_bsbs_first_segment_unchanged_second_reads_the_concatenated_text(model, lm):
    plain = BsbsDecoder(model, beam=3, lm=lm, lm_weight=1.5)
    carried = BsbsDecoder(model, beam=3, lm=lm, lm_weight=1.5, session_context=256)
    assert BsbsDecoder(model, beam=3, lm=lm, lm_weight=1.5, session_context=None).session is None
    seg1, seg2 = _segment(model, 1), _segment(model, 2)
    first = _feed(plain, *seg1)
    assert first.ids and _feed(carried, *seg1) == first  # (a) the first segment of a session: as without
    assert carried.session.position == len(first.ids) + 1 and carried.session.committed == 1
    # (b) the second segment equals a search whose LM reads "<s> seg_1 <s> prefix" in one pass
    second = _feed(carried, *seg2)
    scorers, weights = joint_scorers(model, 0.3, None, 0.0)
    scorers["lm"], weights["lm"] = ConcatLMScorer(lm, [SOS_EOS, *first.ids]), 1.5
    search = BlockwiseBeamSearch(scorers, weights, BsbsConfig(beam_size=3))
    with torch.no_grad():
        for s in range(0, seg2[0].shape[0], 4):
            search.extend_block(seg2[0][s:s + 4], seg2[1][s:s + 4])
        ref = search.finalize()[0].tokens
    assert second.ids == ref
    assert second.ids != _feed(plain, *seg2).ids  # the context changed this segment's result
    assert carried.session.position == len(first.ids) + len(second.ids) + 2


def test_offline_second_segment_reads_the_concatenated_text(model, lm):
    feats = [torch.randn(60, 80, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    carried = OfflineDecoder(model, beam=3, lm=lm, lm_weight=1.5, session_context=256)
    finals = []
    for f in feats:
        carried.feats, carried.frames = [f], (f.shape[0] - 3) // 4  # one whole segment of features
        finals.append(carried.finalize())
    first = offline_decode(model, feats[0], beam=3, lm=lm, lm_weight=1.5)
    assert first.ids and finals[0] == first
    with torch.no_grad():
        enc, lens = model.encode(feats[1][None], torch.tensor([feats[1].shape[0]]))
        enc = enc[0, : int(lens[0])]
    scorers, weights = joint_scorers(model, 0.3, None, 0.0)
    scorers["lm"], weights["lm"] = ConcatLMScorer(lm, [SOS_EOS, *first.ids]), 1.5
    with torch.no_grad():
        ref = BeamSearch(scorers, weights, BeamSearchConfig(beam_size=3))(Memory(enc=enc, ctc_logp=model.ctc_logp(enc)))
    assert finals[1].ids == ref[0].tokens


def test_session_budget_is_whole_pages_of_about_n_tokens():
    assert SessionContextConfig.for_tokens(64).paged().max_tokens == 4 * 16 + 15
    assert SessionContextConfig.for_tokens(256).paged().budget_pages == 16
    assert SessionContextConfig.for_tokens(8).paged().max_tokens == 4 * 2 + 1
    with pytest.raises(ValueError):
        SessionContextConfig.for_tokens(0)


# ----------------------------------------------------------------------------- SAR label context
def test_sar_label_context_carries_the_last_n_tokens(model):
    plain, carried = SarGreedyDecoder(model.sar), SarGreedyDecoder(model.sar, context_tokens=5)
    segs = [_segment(model, s) for s in (5, 6, 7)]
    first = _feed(plain, *segs[0])
    assert len(first.ids) > 5 and _feed(carried, *segs[0]) == first  # the first segment: as without
    assert carried.history == first.ids[-5:]
    # the next segment starts from s_0 .. s_5 of "<sos> c_1 .. c_5", as if committed in earlier blocks
    with torch.no_grad():
        ref = model.sar.lm.hidden(torch.tensor([[SOS_EOS, *first.ids[-5:]]]))[0]
    assert torch.allclose(carried.lm_states(), ref, atol=1e-5)
    second = _feed(carried, *segs[1])
    assert carried.history == (first.ids + second.ids)[-5:]  # the context spans segments
    assert second.ids != _feed(plain, *segs[1]).ids  # the carried labels changed the result


def test_batched_sar_streams_with_different_contexts_equal_each_alone(model):
    def streams():
        decs = [SarGreedyDecoder(model.sar, context_tokens=n) for n in (None, 3, 9)]
        for d, s in zip(decs, (5, 6, 7)):
            _feed(d, *_segment(model, s))  # a first segment each: different carried contexts
        return decs

    blocks = [_segment(model, s, frames=16) for s in (8, 9, 10)]
    alone, batched = streams(), streams()
    assert [len(d.lm_states()) for d in batched] == [1, 4, 10]
    for s in range(0, 16, 4):
        for d, (enc, logp) in zip(alone, blocks):
            d.accept_block(enc[s:s + 4], logp[s:s + 4])
        SarGreedyDecoder.accept_blocks(batched, [e[s:s + 4] for e, _ in blocks], [p[s:s + 4] for _, p in blocks])
        assert [d.partial() for d in alone] == [d.partial() for d in batched]
    assert [d.finalize() for d in alone] == [d.finalize() for d in batched]


# ----------------------------------------------------------------------------- settings
def _args(argv):
    p = argparse.ArgumentParser()
    add_inference_arguments(p)
    return inference_config_from_args(p.parse_args(argv))


def test_session_context_settings():
    assert InferenceConfig().session_context is None and _args([]).session_context is None
    assert _args(["--session-context", "64"]).session_context == 64  # sar: no LM needed
    assert _args(["--session-context", "none"]).session_context is None
    assert _args(["--decoder", "ctc", "--session-context", "0"]).session_context == 0  # 0 = none: fine anywhere
    assert _args(["--decoder", "bsbs", "--lm", "x", "--session-context", "64"]).session_context == 64
    with pytest.raises(SettingsError, match=r"^session_context: expected an integer >= 0 .*got -3$"):
        InferenceConfig(session_context=-3)
    with pytest.raises(SettingsError, match="--session-context with --decoder offline needs --lm DIR"):
        _args(["--decoder", "offline", "--lm", "none", "--session-context", "64"])
    assert _args(["--decoder", "offline", "--session-context", "64"]).lm  # --lm auto: the shipped model's LM
    with pytest.raises(SettingsError, match="ctc has no label context"):
        _args(["--decoder", "ctc", "--session-context", "64"])
    with pytest.raises(SystemExit):
        _args(["--session-context", "many"])
    with pytest.raises(SettingsError, match="is set by the server"):
        InferenceConfig().override({"session_context": 8})


def test_build_decoder_wires_the_context(model, lm):
    cfg = InferenceConfig(decoder="bsbs", lm_weight=0.5, session_context=32)
    assert build_decoder(model, cfg, lm).session.cfg.max_tokens == 32
    assert build_decoder(model, dataclasses.replace(cfg, session_context=None), lm).session is None
    assert build_decoder(model, dataclasses.replace(cfg, decoder="offline"), lm).session is not None
    assert build_decoder(model, InferenceConfig(session_context=7)).context_tokens == 7
    with pytest.raises(ValueError, match="needs --lm DIR"):
        build_decoder(model, dataclasses.replace(cfg, lm_weight=0.0), None)


# ----------------------------------------------------------------------------- through the recognizer
@pytest.fixture(scope="module")
def default_model():
    from asr.models.io import default_model_dir, load_model_dir

    return load_model_dir(default_model_dir())


def _session_audio():
    """The shipped sample, 1.5 s of faint noise, the sample again: two segments at least."""
    from asr.audio import load_audio
    from asr.inference import DEFAULT_MODEL_DIR

    wave = load_audio(str(DEFAULT_MODEL_DIR.parents[1] / "samples" / "so3027_what_in_short.wav")).numpy()
    gap = 0.003 * np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    return np.concatenate([wave, gap, wave, gap])


def _finals(rec, audio, chunk=8000):
    out = []
    for s in range(0, len(audio), chunk):
        out += rec.accept_waveform(audio[s:s + chunk])
    return [r for r in out + rec.finalize() if r.is_final and r.text]


def test_recognizer_sar_context_first_segment_unchanged_and_batched_equal(default_model):
    from streaming.recognizer import Recognizer, process_batch

    audio = _session_audio()
    plain = _finals(Recognizer(default_model, InferenceConfig()), audio)
    carried = _finals(Recognizer(default_model, InferenceConfig(session_context=64)), audio)
    assert len(plain) >= 2 and len(carried) == len(plain)
    assert carried[0] == plain[0]
    # two streams with session context, batched chunk by chunk, equal each stream alone
    recs = [Recognizer(default_model, InferenceConfig(session_context=n)) for n in (64, 8)]
    batched = [[] for _ in recs]
    for s in range(0, len(audio), 8000):
        for out, res in zip(batched, process_batch([(r, audio[s:s + 8000]) for r in recs])):
            out += res
    for out, rec in zip(batched, recs):
        out += rec.finalize()
    alone = [_finals(Recognizer(default_model, InferenceConfig(session_context=n)), audio) for n in (64, 8)]
    assert [[r for r in out if r.is_final and r.text] for out in batched] == alone
