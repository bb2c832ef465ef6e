"""Synthetic speech: voice catalogue, deterministic plans, Kaldi output readable by asr.data.kaldi."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from asr.data.kaldi import read_kaldi_dir
from recipes import tts, voices
from recipes.kaldi_dir import KaldiEntry, write_kaldi_dir
from recipes.voices import Voice

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
LINES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
         "Mrs. J. M. Cheshire of Griffin", "how now brown cow", "a b",
         "we don't know where it will take us", "it is a truth universally acknowledged"]


def test_voice_specs_and_speaker_ids():
    v = Voice.parse("espeak:en-us+f2")
    assert (v.engine, v.name, v.spec, v.speaker) == ("espeak", "en-us+f2", "espeak:en-us+f2",
                                                     "espeak-enusf2")
    for bad in ("en-us", "nope:x", "flite:"):
        with pytest.raises(ValueError, match="ENGINE:NAME"):
            Voice.parse(bad)
    # speaker ids hold no '-' after the engine, so '<speaker>-<n>' sorts in speaker order
    speakers = sorted({v.speaker for v in voices.catalogue()})
    utts = sorted(f"{s}-{n:06d}" for s in speakers for n in (0, 5))
    assert [u.rsplit("-", 1)[0] for u in utts] == [s for s in speakers for _ in (0, 5)]


def test_select_and_skip_missing_engines(monkeypatch, capsys):
    cat = voices.catalogue()
    flite = voices.select_voices(cat, ["flite:*"])
    assert [v.name for v in flite] == ["kal", "kal16", "awb", "rms", "slt"]
    assert voices.select_voices(cat, ["espeak:en-gb+f?", "flite:slt"])[-1] == Voice("flite", "slt")
    assert len(voices.select_voices(cat, ["espeak:en-gb+f?"])) == 5
    monkeypatch.setattr(voices.shutil, "which", lambda name: None)
    assert voices.available_voices(flite + [Voice("pico", "en-US")]) == []
    out = capsys.readouterr().err
    assert "skipping 5 flite voice(s)" in out and "apt-get install flite" in out
    assert "apt-get install libttspico-utils" in out


def test_plan_is_deterministic_balanced_and_filtered(tmp_path):
    vs = [Voice("espeak", "en-us"), Voice("espeak", "en-gb+m3"), Voice("flite", "slt")]
    cfg = tts.TtsConfig(num_utts=5, seed=3)
    lines = [tts.normalize_text(x) for x in LINES]
    a = tts.plan_jobs(lines, vs, tmp_path, cfg)
    b = tts.plan_jobs(lines, list(reversed(vs)), tmp_path, cfg)
    assert a == b  # independent of the order voices are given in
    assert len(a) == 5 and len({j.utt for j in a}) == 5
    texts = [j.text for j in a]
    assert "MRS J M CHESHIRE OF GRIFFIN" not in texts and "A B" not in texts  # vowel-less / too short
    counts = {v: sum(j.voice == v for j in a) for v in vs}
    assert sorted(counts.values()) == [1, 2, 2]
    for j in a:
        assert j.utt.startswith(j.speaker + "-")
        assert 0.8 <= j.prosody.rate <= 1.25 and 0.85 <= j.prosody.pitch <= 1.2
        assert j.path == (tmp_path / "audio" / j.speaker / f"{j.utt}.wav").resolve()
    assert tts.plan_jobs(lines, vs, tmp_path, tts.TtsConfig(num_utts=5, seed=4)) != a
    with pytest.raises(ValueError, match="no TTS voice"):
        tts.plan_jobs(lines, [], tmp_path, cfg)


def test_read_text_lines_formats(tmp_path):
    (tmp_path / "a.txt").write_text("Hello, world!\n\n  \nLJ001-0001 Printing, in the only sense\n")
    assert tts.read_text_lines([tmp_path / "a.txt"]) == ["HELLO WORLD",
                                                         "LJ PRINTING IN THE ONLY SENSE"]
    assert tts.read_text_lines([tmp_path / "a.txt"], "kaldi") == ["WORLD", "PRINTING IN THE ONLY SENSE"]


def test_write_kaldi_dir_sorted_and_validated(tmp_path):
    entries = [KaldiEntry("b-2", "audio/b-2.wav", "HI", "b"), KaldiEntry("a-1", "audio/a-1.wav", "YO", "a"),
               KaldiEntry("b-1", "audio/b-1.wav", "OK", "b")]
    write_kaldi_dir(tmp_path / "d", entries)
    assert (tmp_path / "d" / "wav.scp").read_text().splitlines()[0] == "a-1 audio/a-1.wav"
    assert (tmp_path / "d" / "spk2utt").read_text() == "a a-1\nb b-1 b-2\n"
    with pytest.raises(ValueError, match="duplicate"):
        write_kaldi_dir(tmp_path / "e", entries + entries[:1])
    with pytest.raises(ValueError, match="does not begin with its speaker"):
        write_kaldi_dir(tmp_path / "e", [KaldiEntry("x-1", "a.wav", "HI", "y")])


@needs_espeak
def test_generate_writes_16k_audio_and_a_readable_kaldi_dir(tmp_path, capsys):
    vs = [Voice("espeak", "en-us"), Voice("espeak", "en-gb+f2"), Voice("espeak", "en-029+m3"),
          Voice("espeak", "nosuchvoice")]
    jobs = tts.plan_jobs([tts.normalize_text(x) for x in LINES], vs, tmp_path / "c",
                         tts.TtsConfig(num_utts=4, seed=1))
    counts = tts.generate(jobs, tmp_path / "c", heldout=[Voice("espeak", "en-gb+f2")])
    failed = [j for j in jobs if j.voice.name == "nosuchvoice"]
    assert len(failed) == 1
    assert f"tts: error: {failed[0].utt}" in capsys.readouterr().err  # reported and left out
    assert counts == {"train": 2, "heldout": 1}
    train = read_kaldi_dir(tmp_path / "c" / "train", progress=False)
    held = read_kaldi_dir(tmp_path / "c" / "heldout", progress=False)
    assert not train.errors and not held.errors
    assert {r["speaker"] for r in held.rows} <= {"espeak-engbf2"}
    assert "espeak-engbf2" not in {r["speaker"] for r in train.rows}
    for line in (tmp_path / "c" / "train" / "wav.scp").read_text().splitlines():
        assert line.split()[1].startswith("audio/")  # relative to the corpus folder
    for row in train.rows + held.rows:
        info = sf.info(row["audio"])
        assert (info.samplerate, info.channels) == (16000, 1) and info.duration > 0.5
    # re-running keeps the audio on disk; rendering again gives the same samples (deterministic)
    job = next(j for j in jobs if j not in failed)
    again = tts.render(job)
    on_disk, _ = sf.read(str(job.path), dtype="float32")
    np.testing.assert_allclose(again, on_disk, atol=1 / 32768 + 1e-6)


@pytest.mark.slow
@needs_espeak
def test_main_parallel_workers_give_the_same_corpus(tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("\n".join(LINES * 3) + "\n")
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        assert tts.main(["--text", str(text), "--out", str(out), "--num-utts", "8", "--jobs", str(jobs),
                         "--voices", "espeak:en-us*", "--heldout-voices", "espeak:en-us+m1"]) == 0
        outs.append(out)
    for name in ("train/text", "train/wav.scp", "heldout/utt2spk"):
        assert (outs[0] / name).read_text() == (outs[1] / name).read_text()
    for wav in sorted((outs[0] / "audio").glob("*/*.wav")):
        assert wav.read_bytes() == (outs[1] / wav.relative_to(outs[0])).read_bytes()
