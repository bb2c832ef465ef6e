"""Streaming recognition with a real (tiny, overfitted) model: every decoder, chunking invariance,
timestamps, endpointing, and the transcribe / decode commands."""

import dataclasses
import json
import random

import pytest
import soundfile as sf
import torch

from asr.audio import load_audio, resample
from blockasr.cli import main as asr_main
from asr.data import read_manifest
from asr.models.io import load_model_dir
from asr.inference import InferenceConfig
from streaming import EndpointConfig, Recognizer
from streaming.endpoint import Endpointer

from conftest import SILENCE_LEVEL

DECODERS = ["ctc", "sar", "bsbs", "offline"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def rows(tts_corpus):
    return read_manifest(tts_corpus / "all.jsonl")


def _run(loaded, cfg, wave, sizes, **options):
    rec = Recognizer(loaded, cfg, **options)
    results, i = [], 0
    while i < wave.numel():
        n = next(sizes)
        results += rec.accept_waveform(wave[i:i + n].numpy())
        i += n
    return results + rec.finalize()


def _finals(results):
    return [(r.text, r.segment, r.tokens, r.words) for r in results if r.is_final]


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_recognise_training_speech(loaded, rows, decoder):
    for row in rows[:3]:
        wave = load_audio(row["audio"])
        results = _run(loaded, InferenceConfig(decoder=decoder, block_ms=320), wave, iter(lambda: 1600, None))
        assert results[-1].is_final and results[-1].text == row["text"]


def test_ctc_prefix_beam_final(loaded, rows):
    for row in rows[:3]:
        wave = load_audio(row["audio"])
        results = _run(loaded, InferenceConfig(decoder="ctc", ctc_beam=4, block_ms=320), wave, iter(lambda: 4000, None))
        assert results[-1].text == row["text"]
        assert [w.word for w in results[-1].words] == row["text"].split()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("block_ms", [160, 320])
def test_chunking_invariance(loaded, rows, decoder, block_ms):
    wave = torch.cat([load_audio(r["audio"]) for r in rows[:2]])  # two sentences in one stream
    cfg = InferenceConfig(decoder=decoder, block_ms=block_ms)
    whole = _run(loaded, cfg, wave, iter(lambda: wave.numel(), None))
    rng = random.Random(block_ms)
    for sizes in (iter(lambda: rng.randint(1, 4000), None), iter(lambda: 160, None)):
        got = _run(loaded, cfg, wave, sizes)
        assert _finals(got) == _finals(whole)


def test_word_timestamps_are_ordered_and_inside_audio(loaded, rows):
    wave = load_audio(rows[2]["audio"])
    final = _run(loaded, InferenceConfig(decoder="sar", block_ms=320), wave, iter(lambda: 8000, None))[-1]
    assert [w.word for w in final.words] == rows[2]["text"].split()
    times = [t for w in final.words for t in (w.start, w.end)]
    assert times == sorted(times) and times[-1] <= wave.numel() / 16000 + 0.1


class _ScriptedCtc:
    """The model with its CTC head replaced by fixed posteriors: absolute encoder frame ``t`` of the
    stream gets label ``labels[t]`` (blank after the script). Everything else is the real model."""

    def __init__(self, model, labels):
        self._model, self.labels, self.t = model, labels, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def ctc_logp(self, enc):
        n, vocab = enc.shape[0], self._model.ctc.out_features
        ids = [self.labels[t] if t < len(self.labels) else 0 for t in range(self.t, self.t + n)]
        self.t += n
        logp = torch.full((n, vocab), -30.0)
        logp[torch.arange(n), torch.tensor(ids, dtype=torch.long)] = 0.0
        return logp


def test_endpointing_splits_segments(loaded):
    """Segment boundaries, texts, segment numbers and word times follow from fixed CTC labels,
    whatever the audio chunking (the mechanism, not what a model hears)."""
    tok = loaded.tokenizer
    a, b, c = [i for i in range(3, tok.vocab_size) if tok.is_word_start(i) and tok.decode([i]).strip()][:3]
    # 40 ms frames, 320 ms blocks (8 frames); an endpoint needs 20 blank frames after speech and is
    # checked at block ends (frames 8, 16, 24, 32, ...)
    labels = [0] * 6 + [a, a, 0, b] + [0] * 30 + [c, 0, a]
    #          speech at frames 6-9 ^            ^ blanks 10-39: 22 of them by the block end at 32
    cfg = InferenceConfig(decoder="ctc", block_ms=320)
    endpoint = EndpointConfig(trailing_blank_ms=800, max_segment_ms=None, max_silence_ms=None)
    wave = torch.zeros(16000 * 3)
    rng = random.Random(0)
    for sizes in (iter(lambda: 3200, None), iter(lambda: wave.numel(), None), iter(lambda: rng.randint(1, 4000), None)):
        scripted = dataclasses.replace(loaded, model=_ScriptedCtc(loaded.model, labels))
        finals = [r for r in _run(scripted, cfg, wave, sizes, endpoint=endpoint) if r.is_final]
        spoken = [r for r in finals if r.text]
        assert [r.tokens for r in spoken] == [[a, b], [c, a]]
        assert [r.text for r in spoken] == [tok.decode([a, b]), tok.decode([c, a])]
        assert [r.segment for r in finals] == list(range(len(finals))) and spoken[1].segment == 1
        assert (spoken[0].start, spoken[0].end, spoken[1].start) == (0.0, 1.28, 1.28)
        assert [w.start for w in spoken[0].words] == [0.24, 0.36]
        assert [w.start for w in spoken[1].words] == [1.6, 1.68]
        assert finals[-1].end <= 3.0  # times stay inside the audio


def test_endpointer_rules():
    ep = Endpointer(EndpointConfig(trailing_blank_ms=120, max_segment_ms=400, max_silence_ms=200), frame_ms=40)
    assert not ep.update([0, 0, 5, 0, 0])
    assert ep.update([0])  # 3 blanks after speech = 120 ms
    ep.reset()
    assert not ep.update([0] * 4) and ep.update([0])  # 200 ms of silence, no speech
    ep.reset()
    assert ep.update([5] * 10)  # max segment length


def test_bad_config_is_clear(loaded):
    with pytest.raises(ValueError, match="decoder: expected one of ctc, sar, bsbs, offline, got 'beam'"):
        InferenceConfig(decoder="beam")
    with pytest.raises(ValueError, match="block_ms: expected a positive multiple of 40 ms"):
        InferenceConfig(block_ms=100)


def test_transcribe_cli(tiny_model_dir, loaded, rows, tmp_path, capsys):
    """The CLI reads the 44.1 kHz file in chunks (resampling each) and must give exactly what the
    recognizer gives on the whole file loaded at once."""
    wav = tmp_path / "two.wav"
    a, b = load_audio(rows[0]["audio"]), load_audio(rows[1]["audio"])
    quiet = SILENCE_LEVEL * torch.randn(24000, generator=torch.Generator().manual_seed(0))
    sf.write(wav, resample(torch.cat([a, quiet, b]), 16000, 44100).numpy(), 44100)
    cfg = InferenceConfig(decoder="sar", block_ms=320)
    expected = [r for r in _run(loaded, cfg, load_audio(wav), iter(lambda: 16000, None)) if r.is_final and r.text]
    assert len(expected) == 2  # an endpoint in the pause
    assert asr_main(["transcribe", str(wav), "--model", str(tiny_model_dir), "--format", "json", "--block-ms", "320"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == " ".join(r.text for r in expected)
    assert [s["text"] for s in out["segments"]] == [r.text for r in expected]
    assert out["segments"][1]["words"][0]["start"] > 1.0
    assert asr_main(["transcribe", str(wav), "--model", str(tiny_model_dir), "--format", "srt", "--block-ms", "320"]) == 0
    srt = capsys.readouterr().out
    assert srt.startswith("1\n00:00:0") and "\n2\n00:00:0" in srt
    assert asr_main(["transcribe", str(tmp_path / "missing.wav"), "--model", str(tiny_model_dir)]) == 2
    assert "missing.wav: no such audio file" in capsys.readouterr().err


@pytest.mark.parametrize("decoder,block", [("sar", "320"), ("offline", "full")])
def test_decode_cli(tiny_model_dir, tts_corpus, tmp_path, capsys, decoder, block):
    out = tmp_path / decoder
    assert asr_main(["decode", "--model", str(tiny_model_dir), "--data", str(tts_corpus / "all.jsonl"),
                     "--decoder", decoder, "--block-ms", block, "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["wer"] == 0.0 and summary["utterances"] == 6
    assert summary["rtf"] > 0 and summary["latency_ms_p90"] >= summary["latency_ms_p50"] > 0
    assert len((out / "hyp.txt").read_text().splitlines()) == 6


def test_process_batch_equals_one_by_one(loaded, rows):
    """The server's batching hook: several streams stepped together give each stream's own results."""
    from streaming import process_batch

    cfg = InferenceConfig(decoder="sar", block_ms=320)
    waves = [load_audio(r["audio"]).numpy() for r in rows[:4]]
    alone = [Recognizer(loaded, cfg) for _ in waves]
    together = [Recognizer(loaded, cfg) for _ in waves]
    want = [[] for _ in waves]
    got = [[] for _ in waves]
    chunk = 5120  # 320 ms: the streams stay in lockstep, so their encoder steps are batched
    for start in range(0, max(len(w) for w in waves), chunk):
        work = [(rec, w[start:start + chunk]) for rec, w in zip(together, waves)]
        for i, res in enumerate(process_batch(work)):
            got[i] += res
        for i, (rec, w) in enumerate(zip(alone, waves)):
            want[i] += rec.accept_waveform(w[start:start + chunk])
    for i in range(len(waves)):
        want[i] += alone[i].finalize()
        got[i] += together[i].finalize()
        assert [(r.text, r.is_final, r.segment) for r in got[i]] == [(r.text, r.is_final, r.segment) for r in want[i]]
        assert got[i][-1].text == rows[i]["text"]
