"""LibriSpeech preparation from the upstream layout (fixture corpora built by recipes.fixtures)."""

import json
import shutil
from pathlib import Path

import pytest

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from recipes import librispeech
from recipes.fixtures import default_source, make_librispeech, tone_source
from asr.text import normalize_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls")
    expected = make_librispeech(root, subsets=("dev-clean", "test-other", "train-clean-100"),
                                speakers=2, utts_per_speaker=2, source=tone_source())
    return root, expected


def test_all_subsets_prepared_with_expected_rows(corpus, tmp_path):
    root, expected = corpus
    written = librispeech.prepare_librispeech(root, tmp_path)
    assert sorted(written) == ["dev-clean", "test-other", "train-clean-100"]
    for subset, rows_expected in expected.items():
        rows = read_manifest(tmp_path / f"{subset}.jsonl")
        assert [r["id"] for r in rows] == [r["id"] for r in rows_expected]
        for row, exp in zip(rows, rows_expected):
            assert row["text"] == exp["text"]
            assert row["speaker"] == exp["speaker"] == row["id"].split("-")[0]
            assert row["duration"] == pytest.approx(exp["duration"], abs=1e-3)
            assert Path(row["audio"]).is_absolute() and row["audio"] == exp["audio"]
            assert row["start"] is None and row["end"] is None
        # the manifest's duration is what load_audio gives
        wave = load_audio(rows[0]["audio"])
        assert wave.numel() / 16000 == pytest.approx(rows[0]["duration"], abs=1e-3)


def test_root_may_be_the_librispeech_folder_and_subsets_selected(corpus, tmp_path):
    root, _ = corpus
    written = librispeech.prepare_librispeech(root / "LibriSpeech", tmp_path, ["test-other"])
    assert list(written) == ["test-other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-other.jsonl"]


def test_missing_subset_and_missing_corpus_are_clear_errors(corpus, tmp_path, capsys):
    root, _ = corpus
    with pytest.raises(FileNotFoundError, match="dev-other"):
        librispeech.prepare_librispeech(root, tmp_path, ["dev-other"])
    assert librispeech.main(["--root", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 1
    assert "no LibriSpeech subsets found" in capsys.readouterr().err


def test_transcript_naming_a_missing_flac_is_reported(tmp_path):
    folder = tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2"
    folder.mkdir(parents=True)
    (folder / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    with pytest.raises(ValueError, match=r"1-2.trans.txt:1: utterance '1-2-0000' has no audio"):
        librispeech.prepare_librispeech(tmp_path, tmp_path / "out")


def test_download_without_network_skips_with_a_message(corpus, tmp_path, monkeypatch, capsys):
    root, _ = corpus
    monkeypatch.setattr(librispeech, "network_available", lambda *a, **k: False)
    monkeypatch.setattr(librispeech.urllib.request, "urlretrieve",
                        lambda *a, **k: pytest.fail("must not download without a network"))
    out = tmp_path / "m"
    assert librispeech.main(["--root", str(root), "--out", str(out),
                             "--download", "dev-other", "--subsets", "dev-clean"]) == 0
    assert "no network" in capsys.readouterr().err
    assert [json.loads(line)["id"] for line in open(out / "dev-clean.jsonl")][0] == "1000-120000-0000"
    with pytest.raises(ValueError, match="unknown LibriSpeech subset"):
        librispeech.download_librispeech(["train-clean-9000"], tmp_path)


@pytest.mark.parametrize("raw, expected", [
    ("HELLO  world", "HELLO WORLD"),
    ("don't stop-believing, 'til 3 AM!", "DON'T STOP BELIEVING 'TIL AM"),
    ("  ' ", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_fixture_with_synthetic_speech(tmp_path):
    expected = make_librispeech(tmp_path, subsets=("dev-clean",), speakers=1, utts_per_speaker=2,
                                source=default_source())
    rows = read_manifest(librispeech.prepare_librispeech(tmp_path, tmp_path / "m")["dev-clean"])
    assert [r["text"] for r in rows] == [e["text"] for e in expected["dev-clean"]]
    assert all(r["duration"] > 1.0 for r in rows)  # whole sentences spoken, not tones per word


def test_recipes_plug_into_a_prepare_subcommand_tree(corpus, tmp_path):
    """The way `asr prepare <corpus>` wires them: add_arguments on a sub-parser, then run(args)."""
    import argparse

    from recipes import fixtures, tedlium, tts

    parser = argparse.ArgumentParser(prog="asr prepare")
    sub = parser.add_subparsers(dest="corpus", required=True)
    modules = {"librispeech": librispeech, "tedlium": tedlium, "tts": tts, "fixtures": fixtures}
    for name, module in modules.items():
        module.add_arguments(sub.add_parser(name, description=module.__doc__))
    root, _ = corpus
    args = parser.parse_args(["librispeech", "--root", str(root), "--out", str(tmp_path)])
    assert modules[args.corpus].run(args) == 0
    assert (tmp_path / "dev-clean.jsonl").is_file()
    args = parser.parse_args(["tts", "--list-voices", "--voices", "nothing:*"])
    assert modules[args.corpus].run(args) == 0
