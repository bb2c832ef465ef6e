"""Streams that end together: streaming.finalize_batch equals Recognizer.finalize on each."""

import copy

import pytest
import torch

from asr.audio import load_audio
from asr.decode import SarGreedyDecoder
from asr.data import read_manifest
from asr.inference import InferenceConfig
from streaming import Recognizer, finalize_batch, process_batch


@pytest.fixture(scope="module")
def waves(tts_corpus):
    rows = read_manifest(tts_corpus / "all.jsonl")
    return [load_audio(r["audio"]).numpy() for r in rows[:4]]


SIZES = [5120, 3000, 7000, 5120, 1600, 4000]  # samples per pass of each stream


def _ended(loaded, cfg, audio, batched: bool):
    """Six streams of different lengths (a whole clip, a clip cut mid-word, a short start, no audio
    at all), fed through process_batch in chunks of different sizes, then ended all at once."""
    cuts = [len(audio[0]), len(audio[1]) * 2 // 3, len(audio[2]), 2500, 0, len(audio[3]) - 777]
    waves = [audio[0], audio[1], audio[2], audio[3], audio[0], audio[3]]
    recs = [Recognizer(loaded, cfg) for _ in waves]
    out = [[] for _ in waves]
    pos = [0] * len(waves)
    while any(p < c for p, c in zip(pos, cuts)):
        idx = [i for i in range(len(waves)) if pos[i] < cuts[i]]
        work = [(recs[i], waves[i][pos[i]:min(pos[i] + SIZES[i], cuts[i])]) for i in idx]
        for i, res in zip(idx, process_batch(work)):
            out[i] += res
            pos[i] += SIZES[i]
    recs[5].finalize()  # one already finalized: nothing more from it
    ends = finalize_batch(recs) if batched else [rec.finalize() for rec in recs]
    assert all(rec.finished for rec in recs) and ends[5] == []
    return [[(r.text, r.is_final, r.segment, r.tokens, r.words, r.start, r.end) for r in res + end]
            for res, end in zip(out, ends)]


@pytest.mark.parametrize("decoder, options", [("ctc", {}), ("ctc", {"ctc_beam": 4}), ("sar", {}),
                                              ("sar", {"session_context": 8}), ("bsbs", {}), ("offline", {})])
def test_finalize_batch_equals_finalize(loaded, waves, decoder, options):
    cfg = InferenceConfig(decoder=decoder, block_ms=320, **options)
    together = _ended(loaded, cfg, waves, batched=True)
    assert together == _ended(loaded, cfg, waves, batched=False)
    assert all(res[-1][1] for res in together[:5])  # each ends with a final


def test_finalize_batch_of_nothing():
    assert finalize_batch([]) == []


def _sar_decoders(loaded):
    """Decoders with different LM contexts and carried tails, fed random encoder frames (so the tails
    hold tokens, unlike a flush pad's silence); the same ones on every call."""
    gen = torch.Generator().manual_seed(3)
    decoders = [SarGreedyDecoder(loaded.model.sar, g) for g in (2, 3, 0, 4)]
    for d, n in zip(decoders, (1, 3, 2, 4)):
        for _ in range(n):
            enc = 3 * torch.randn(8, loaded.model.encoder.output_dim, generator=gen)
            d.accept_block(enc, loaded.model.ctc_logp(enc))
    return decoders


@torch.no_grad()
def test_sar_finalize_many_equals_finalize(loaded):
    want = [d.finalize() for d in _sar_decoders(loaded)]
    decoders = _sar_decoders(loaded)
    assert sum(d.carry_enc is not None for d in decoders) == 3
    assert sum(bool(t.ids) for t in want) >= 2
    assert SarGreedyDecoder.finalize_many(decoders) == want
