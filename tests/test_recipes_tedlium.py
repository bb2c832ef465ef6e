"""TED-LIUM release 2 / 3 preparation: segments, times, texts (fixture corpora from recipes.fixtures)."""

import shutil
from pathlib import Path

import pytest

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from recipes import tedlium
from recipes.fixtures import make_tedlium, tone_source


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root2 = tmp_path_factory.mktemp("ted2")
    root3 = tmp_path_factory.mktemp("ted3")
    source = tone_source()
    return (root2, make_tedlium(root2, release=2, source=source),
            root3, make_tedlium(root3, release=3, source=source))


def _check(rows, expected):
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    for row, exp in zip(rows, expected):
        assert row["text"] == exp["text"]
        assert row["speaker"] == exp["speaker"]
        assert row["audio"] == exp["audio"] and Path(row["audio"]).is_absolute()
        assert row["start"] == pytest.approx(exp["start"], abs=1e-6)
        assert row["end"] == pytest.approx(exp["end"], abs=1e-6)
        assert row["duration"] == pytest.approx(exp["end"] - exp["start"], abs=1e-3)


def test_release2_segments_texts_and_times(corpora, tmp_path):
    root2, expected, _, _ = corpora
    written = tedlium.prepare_tedlium(root2, tmp_path)
    assert sorted(written) == ["dev", "test", "train"]
    for split in ("dev", "test", "train"):
        _check(read_manifest(written[split]), expected[split])
    dev = read_manifest(written["dev"])
    # ignore_time_segment_in_scoring gaps and the all-noise segment are gone: 4 of 5 speech segments
    assert len(dev) == 4
    assert dev[0]["id"].startswith("DanBarber_2010-0000050-")  # <talk>-<start cs>-<end cs>
    assert [r["text"] for r in dev][:3] == ["SO IT'S THE PEOPLE WHO'VE LEFT",
                                            "AND I SAID WELL THAT'S IT", "WE CAN'T DO THAT ANYMORE"]
    # the last stm segment overran the audio: its end is clipped to the file, the id keeps stm times
    stm_end = int(dev[-1]["id"].rsplit("-", 1)[1]) / 100
    assert dev[-1]["end"] == pytest.approx(stm_end - 0.3, abs=1e-3)


def test_segment_cut_matches_manifest_times(corpora, tmp_path):
    root2, _, _, _ = corpora
    rows = read_manifest(tedlium.prepare_tedlium(root2, tmp_path, splits=["test"])["test"])
    for row in rows:
        wave = load_audio(row["audio"], row["start"], row["end"])
        assert wave.numel() == pytest.approx(row["duration"] * 16000, abs=2)
        assert wave.abs().max() > 0.05  # the segment holds the spoken words, not the gap


@pytest.mark.parametrize("layout, key", [("legacy", "legacy"),
                                         ("speaker-adaptation", "speaker-adaptation")])
def test_release3_layouts(corpora, tmp_path, layout, key):
    _, _, root3, expected = corpora
    for root in (root3, root3 / "TEDLIUM_release-3", root3 / "TEDLIUM_release-3" / layout):
        written = tedlium.prepare_tedlium(root, tmp_path, layout=layout)
        assert sorted(written) == ["dev", "test", "train"]
        for split, path in written.items():
            _check(read_manifest(path), expected[f"{key}/{split}"])


def test_release3_full_data_layout(corpora, tmp_path):
    _, _, root3, expected = corpora
    assert tedlium.main(["--root", str(root3), "--out", str(tmp_path), "--layout", "data"]) == 0
    _check(read_manifest(tmp_path / "train.jsonl"), expected["data/train"])


@pytest.mark.parametrize("raw, expected", [
    ("{NOISE} so it 's the people who 've left", "SO IT'S THE PEOPLE WHO'VE LEFT"),
    ("we can 't do that(2) anymore {BREATH}", "WE CAN'T DO THAT ANYMORE"),
    ("<unk> {SMACK} <sil> [laughter]", ""),
    ("'s at the start", "'S AT THE START"),
    ("ignore_time_segment_in_scoring", ""),
])
def test_normalize_tedlium_text(raw, expected):
    assert tedlium.normalize_tedlium_text(raw) == expected


def test_errors_name_file_and_line(tmp_path, capsys):
    split = tmp_path / "dev"
    (split / "sph").mkdir(parents=True)
    (split / "stm").mkdir()
    (split / "stm" / "Talk_2010.stm").write_text(";; comment\nTalk_2010 1 Talk_2010 0.5\n")
    with pytest.raises(FileNotFoundError, match="no audio file"):
        tedlium.prepare_tedlium(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"Talk_2010.stm:2: expected"):
        tedlium.read_stm(split / "stm" / "Talk_2010.stm")
    assert tedlium.main(["--root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "no TED-LIUM layout found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_fixture_cli_with_synthetic_speech(tmp_path):
    from recipes import fixtures

    assert fixtures.main(["--out", str(tmp_path), "--corpus", "tedlium", "--tedlium-release", "3"]) == 0
    written = tedlium.prepare_tedlium(tmp_path, tmp_path / "m", layout="speaker-adaptation")
    rows = read_manifest(written["test"])
    assert [r["text"] for r in rows] == ["SO IT'S THE PEOPLE WHO'VE LEFT", "AND I SAID WELL THAT'S IT",
                                         "WE CAN'T DO THAT ANYMORE", "THANK YOU VERY MUCH"]
    assert all(r["id"].startswith("JaneMcGonigal_2010SA-") for r in rows)
