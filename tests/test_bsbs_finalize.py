"""The end of a bsbs stream: Recognizer.finalize hands the flush's blocks to the final search
(BlockwiseBeamSearch.end_of_stream), on the tiny model."""

import pytest

from asr.audio import load_audio
from asr.inference import InferenceConfig
from asr.search import BeamSearch, BlockwiseBeamSearch
from streaming import EndpointConfig, Recognizer, finalize_batch

NO_ENDPOINT = EndpointConfig(trailing_blank_ms=None, max_segment_ms=None, max_silence_ms=None)


@pytest.mark.parametrize("block_ms", [160, 320])
def test_finalize_searches_the_flush_once_and_equals_handing_it_to_finalize(loaded, rows, monkeypatch, block_ms):
    """No beam expansion in the flush's blocks; the n-best equals a fresh search fed the same
    blocks up to the flush and then the flush's frames in its finalize call (the batch path)."""
    record = {"expansions": 0, "searches": []}
    expand, end, finalize = BeamSearch.expand, BlockwiseBeamSearch.end_of_stream, BlockwiseBeamSearch.finalize

    def counted(self, *args, **kwargs):
        record["expansions"] += 1
        return expand(self, *args, **kwargs)

    def ending(self):
        record["frames"], record["expansions"] = self.memory.num_frames, 0
        end(self)

    def finalized(self, *args):
        record["flush_expansions"] = record["expansions"]
        nbest = finalize(self, *args)
        record["searches"].append((self, nbest))
        return nbest

    monkeypatch.setattr(BeamSearch, "expand", counted)
    monkeypatch.setattr(BlockwiseBeamSearch, "end_of_stream", ending)
    monkeypatch.setattr(BlockwiseBeamSearch, "finalize", finalized)
    cfg = InferenceConfig(decoder="bsbs", block_ms=block_ms)
    found = False
    for row in rows[:3]:
        wave = load_audio(row["audio"])
        rec = Recognizer(loaded, cfg, endpoint=NO_ENDPOINT)
        for s in range(0, wave.numel(), 2000):
            rec.accept_waveform(wave[s:s + 2000].numpy())
        record["searches"].clear()
        final = rec.finalize()[-1]
        assert record["flush_expansions"] == 0
        (search, nbest), = record["searches"]
        assert final.tokens == nbest[0].tokens
        found |= bool(final.tokens)
        cut, memory, bs = record["frames"], search.memory, rec.block_size
        ref = BlockwiseBeamSearch(search.search.scorers, search.search.weights, search.config)
        for a in range(0, cut, bs):
            ref.extend_block(memory.enc[a:min(a + bs, cut)], memory.ctc_logp[a:min(a + bs, cut)])
        want = finalize(ref, memory.enc[cut:], memory.ctc_logp[cut:])
        assert [h.tokens for h in nbest] == [h.tokens for h in want]
        assert [h.score for h in nbest] == pytest.approx([h.score for h in want], abs=1e-6)
    assert found


def test_finalize_batch_ends_every_bsbs_stream_alike(loaded, rows, monkeypatch):
    """finalize_batch declares the end of stream on each bsbs search too (no expansion in the flush)."""
    ended = []
    end = BlockwiseBeamSearch.end_of_stream
    monkeypatch.setattr(BlockwiseBeamSearch, "end_of_stream", lambda self: (ended.append(self), end(self)))
    cfg = InferenceConfig(decoder="bsbs", block_ms=320)
    recs = [Recognizer(loaded, cfg, endpoint=NO_ENDPOINT) for _ in range(2)]
    for rec, row in zip(recs, rows):
        rec.accept_waveform(load_audio(row["audio"]).numpy())
    searches = [rec.decoder.search for rec in recs]
    finalize_batch(recs)
    assert ended == searches and all(s.ending for s in searches)


def test_other_decoders_have_no_end_of_stream_to_declare(loaded, rows):
    rec = Recognizer(loaded, InferenceConfig(decoder="sar", block_ms=320), endpoint=NO_ENDPOINT)
    rec.accept_waveform(load_audio(rows[0]["audio"]).numpy())
    assert rec.finalize()[-1].is_final
    assert not isinstance(getattr(rec.decoder, "search", None), BlockwiseBeamSearch)
