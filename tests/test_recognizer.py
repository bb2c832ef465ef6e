"""Streaming recognition with a real (tiny, overfitted) model: every decoder, chunking invariance,
timestamps, endpointing, and the transcribe / decode commands."""

import dataclasses
import json
import math
import random

import pytest
import soundfile as sf
import torch

from asr.audio import load_audio, resample
from blockasr.cli import main as asr_main
from asr.encoder import FRAME_MS, block_size_from_ms
from asr.features import Fbank
from asr.inference import InferenceConfig
from asr.search.ctc import ctc_greedy
from streaming import EndpointConfig, Recognizer, process_batch
from streaming.endpoint import Endpointer
from streaming.recognizer import flush_pad

from conftest import SILENCE_LEVEL

DECODERS = ["ctc", "sar", "bsbs", "offline"]


def _run(loaded, cfg, wave, sizes, batched=False, **options):
    """Stream ``wave`` in chunks of ``sizes`` through one recognizer (``batched``: through
    :func:`process_batch`, the server's path), then finalize."""
    rec = Recognizer(loaded, cfg, **options)
    results, i = [], 0
    while i < wave.numel():
        n = next(sizes)
        chunk = wave[i:i + n].numpy()
        results += process_batch([(rec, chunk)])[0] if batched else rec.accept_waveform(chunk)
        i += n
    return results + rec.finalize()


def _finals(results):
    return [(r.text, r.segment, r.tokens, r.words) for r in results if r.is_final]


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_recognise_training_speech(loaded, rows, decoder):
    """Model quality, so slow: the overfitted tiny model recognises its training speech with every
    decoder (passes or fails with the espeak-ng version and the machine's numerics; the fast suite
    checks the decoders by equivalences: chunking, batching, the flush, fixed posteriors)."""
    for row in rows[:3]:
        wave = load_audio(row["audio"])
        results = _run(loaded, InferenceConfig(decoder=decoder, block_ms=320), wave, iter(lambda: 1600, None))
        assert results[-1].is_final and results[-1].text == row["text"]


@pytest.mark.slow
def test_ctc_prefix_beam_final(loaded, rows):
    """Model quality, so slow (see test_decoders_recognise_training_speech); the mechanism is
    test_ctc_prefix_beam_final_from_fixed_posteriors."""
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
    """The final's words are its text's words (whatever the model heard), ordered, inside the audio."""
    wave = load_audio(rows[2]["audio"])
    final = _run(loaded, InferenceConfig(decoder="sar", block_ms=320), wave, iter(lambda: 8000, None))[-1]
    assert len(final.words) >= 2 and [w.word for w in final.words] == final.text.split()
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


NO_ENDPOINT = EndpointConfig(trailing_blank_ms=None, max_segment_ms=None, max_silence_ms=None)


def test_ctc_prefix_beam_final_from_fixed_posteriors(loaded):
    """With fixed CTC labels (one-hot posteriors) the prefix beam search over the segment's blocks
    gives the labels' tokens, with a repeat split by a blank kept twice and a run across a block
    boundary kept once, their spike frames as word times, and the same final as greedy CTC;
    whatever the chunking."""
    tok = loaded.tokenizer
    a, b = [i for i in range(3, tok.vocab_size) if tok.is_word_start(i) and tok.decode([i]).strip()][:2]
    # 320 ms blocks (8 frames): b runs across the boundary at frame 8, a repeats after a blank
    labels = [0, 0, a, 0, 0, 0, 0, b, b, 0, a, 0, a, 0]
    wave = torch.zeros(16000 * 2)
    rng = random.Random(1)
    for sizes in (iter(lambda: 4000, None), iter(lambda: rng.randint(1, 4000), None)):
        finals = []
        for beam in (1, 4):
            scripted = dataclasses.replace(loaded, model=_ScriptedCtc(loaded.model, labels))
            cfg = InferenceConfig(decoder="ctc", ctc_beam=beam, block_ms=320)
            finals.append([r for r in _run(scripted, cfg, wave, sizes, endpoint=NO_ENDPOINT) if r.is_final][-1])
        greedy, beamed = finals
        assert beamed.tokens == greedy.tokens == [a, b, a, a]
        assert beamed.text == greedy.text == tok.decode([a, b, a, a])
        assert [w.start for w in beamed.words] == [w.start for w in greedy.words] == [0.08, 0.28, 0.4, 0.48]


@pytest.mark.parametrize("block_ms", [320, 640])
@pytest.mark.parametrize("batched", [False, True])
def test_flush_pad_reaches_every_frame(loaded, block_ms, batched):
    """With the flush pad the encoder frames the decoder sees cover all of the stream's audio (the
    fbank's last partial window and the subsampling's receptive field fall in the pad), and a token
    that spikes in the pad is kept with its times clipped to the audio. Fixed CTC labels: the
    mechanism, not what a model hears."""
    tok = loaded.tokenizer
    a, b = [i for i in range(3, tok.vocab_size) if tok.is_word_start(i) and tok.decode([i]).strip()][:2]
    cfg = InferenceConfig(decoder="ctc", block_ms=block_ms)
    for n in (48000, 48000 + 123, 32007, 5000):
        frames = math.ceil(n * 1000 / 16000 / FRAME_MS)  # encoder frames that cover the real audio
        # a in the last frame of the audio, b two frames after its end (in the pad)
        labels = [0] * (frames - 1) + [a, 0, b]
        model = _ScriptedCtc(loaded.model, labels)
        wave = SILENCE_LEVEL * torch.randn(n, generator=torch.Generator().manual_seed(n))
        results = _run(dataclasses.replace(loaded, model=model), cfg, wave, iter(lambda: 1600, None),
                       batched=batched, endpoint=NO_ENDPOINT)
        assert model.t >= len(labels)  # every frame of the audio, and two frames of the pad, reached the decoder
        final = results[-1]
        assert [r.is_final for r in results].count(True) == 1 and final.tokens == [a, b]
        audio_s = round(n / 16000, 3)
        assert final.end == audio_s and final.start == 0.0
        assert all(w.start <= w.end <= audio_s for w in final.words)
        assert final.words[-1].start == audio_s  # b spiked after the audio: clipped, not dropped
        assert all(r.end <= audio_s for r in results)
        quiet = torch.cat([wave, SILENCE_LEVEL * torch.randn(16000, generator=torch.Generator().manual_seed(1))])
        model = _ScriptedCtc(loaded.model, labels)
        longer = _run(dataclasses.replace(loaded, model=model), cfg, quiet, iter(lambda: 1600, None),
                      batched=batched, endpoint=NO_ENDPOINT)
        assert longer[-1].tokens == final.tokens  # the pad is as good as 1 s of appended silence


def _abrupt(wave):
    """The clip cut right after its last loud sample: no trailing silence at all."""
    loud = (wave.abs() > 0.02).nonzero()
    return wave[: int(loud[-1]) + 1]


@pytest.mark.parametrize("block_ms", [320, 640])
def test_flush_equals_full_context(loaded, rows, block_ms):
    """The end of the stream processes every frame: for a clip that stops abruptly (after the speech,
    or inside a word), the streaming result equals greedy CTC over the full-context forward of the
    same audio with the flush pad appended, under the same block mask, however the audio was
    chunked (also through process_batch); its times stay inside the real audio."""
    model = loaded.model
    cfg = InferenceConfig(decoder="ctc", block_ms=block_ms)
    for row in rows[:3]:
        wave = _abrupt(load_audio(row["audio"]))
        for cut in (wave.numel(), int(wave.numel() * 0.8)):
            clip = wave[:cut]
            padded = torch.cat([clip, flush_pad(cut, block_size_from_ms(block_ms), loaded.features)])
            with torch.no_grad():
                feats, lens = Fbank(loaded.features)(padded[None], torch.tensor([padded.numel()]))
                enc, _ = model.encoder(model.cmvn(feats), lens, block_size_from_ms(block_ms), cfg.left_blocks)
                want = ctc_greedy(model.ctc_logp(enc[0])).tokens
            assert want  # something to lose
            for sizes, batched in ((iter(lambda: 1600, None), False), (iter(lambda: 7, None), False),
                                   (iter(lambda: cut, None), False), (iter(lambda: 5120, None), True)):
                results = _run(loaded, cfg, clip, sizes, batched=batched, endpoint=NO_ENDPOINT)
                assert [r.is_final for r in results].count(True) == 1
                assert results[-1].tokens == want
                assert results[-1].end <= round(cut / 16000, 3)
                assert all(w.end <= results[-1].end for w in results[-1].words)


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
def test_decode_cli(tiny_model_dir, loaded, rows, tmp_path, capsys, decoder, block):
    """``asr decode`` writes, for each utterance, the text the recognizer gives on it (with the
    same settings and its end-of-stream flush), and scores those texts against the references."""
    import jiwer

    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / decoder
    assert asr_main(["decode", "--model", str(tiny_model_dir), "--data", str(data),
                     "--decoder", decoder, "--block-ms", block, "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = InferenceConfig(decoder=decoder, block_ms=None if block == "full" else int(block))
    hyps = []
    for row in rows:
        wave = load_audio(row["audio"])
        hyps.append(" ".join(r.text for r in _run(loaded, cfg, wave, iter(lambda: wave.numel(), None))
                             if r.is_final and r.text))
    assert (out / "hyp.txt").read_text().splitlines() == [f"{r['id']} {h}" for r, h in zip(rows, hyps)]
    assert summary["wer"] == round(100 * jiwer.wer([r["text"] for r in rows], hyps), 2)
    assert summary["utterances"] == 6
    assert summary["rtf"] > 0 and summary["latency_ms_p90"] >= summary["latency_ms_p50"] > 0


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
        assert got[i][-1].is_final and got[i][-1].text  # something to compare


@pytest.mark.parametrize("block_ms", [320, 640])
def test_samples_until_block_is_exact(loaded, rows, block_ms):
    """``samples_until_block`` is the exact count: one sample fewer completes no block (the encoder
    emits nothing, no result comes), exactly that many completes one block; from any start."""
    wave = load_audio(rows[0]["audio"])
    rec = Recognizer(loaded, InferenceConfig(decoder="sar", block_ms=block_ms))
    block = block_size_from_ms(block_ms)
    rec.accept_waveform(wave[: random.Random(0).randrange(1, 4000)].numpy())  # start mid-block
    i = rec.samples
    while True:
        n = rec.samples_until_block()
        if i + n > wave.numel():
            break
        offset = rec.state.offset
        assert rec.accept_waveform(wave[i:i + n - 1].numpy()) == [] and rec.state.offset == offset
        rec.accept_waveform(wave[i + n - 1:i + n].numpy())
        assert rec.state.offset == offset + block
        i += n
    rec.finalize()
    assert rec.samples_until_block() is None
    assert Recognizer(loaded, InferenceConfig(decoder="ctc", block_ms=None)).samples_until_block() is None
