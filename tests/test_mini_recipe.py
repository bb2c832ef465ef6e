"""egs/mini end to end, shortened (CI): synthetic speech -> tokenizer -> CMVN -> train -> export ->
streaming decode -> RESULTS.md, with the real `asr` commands, in a copy of the recipe.

The shortened run: 150 training utterances, a 128-piece vocabulary, 100 steps, 20 decoded utterances
per decoder. It checks that every stage completes and leaves its outputs, that the decode summaries are
well formed and that RESULTS.md has the numbers; the WER of so short a run is not checked.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MAX_UTTS = 20
VOCAB = 128  # 150 short sentences are too few for the recipe's 500 pieces
SHORT_RUN = ["--train-utts", "150", "--eval-utts", "80", "--vocab-size", str(VOCAB), "--cmvn-utts", "100",
             "--average-num", "2", "--train-args", "--max-steps 100",
             "--decode-args", f"--max-utts {MAX_UTTS} --threads 1 --quiet"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (./install.sh)"),
]


def _shared_text(root: Path) -> Path:
    """``../shared`` when this checkout has it; otherwise a stand-in with generated sentences in the
    two text files the recipe reads (plain lines; Kaldi ``<id> TEXT`` lines)."""
    if (SHARED / "text" / "brown.txt").is_file():
        return SHARED
    import random

    rng = random.Random(0)
    subjects = ["THE MAN", "A WOMAN", "THE CHILD", "MY FRIEND", "THE TEACHER", "OUR NEIGHBOUR", "THE DOCTOR"]
    verbs = ["SAW", "FOUND", "BOUGHT", "OPENED", "CARRIED", "PAINTED", "WANTED", "CLEANED"]
    objects = ["A RED BOOK", "THE OLD DOOR", "SOME WARM BREAD", "A SMALL BOAT", "THE GREEN CHAIR", "TWO LETTERS"]
    places = ["IN THE MORNING", "AT HOME", "NEAR THE RIVER", "AFTER LUNCH", "IN THE GARDEN", "ON MONDAY"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(places)}"
             for _ in range(600)]
    text = root / "shared" / "text"
    text.mkdir(parents=True)
    (text / "brown.txt").write_text("\n".join(lines[:400]) + "\n")
    (text / "ljspeech_transcripts.txt").write_text("".join(f"LJ{i:03d} {t}\n" for i, t in enumerate(lines[400:])))
    return root / "shared"


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Runs the shortened recipe once in a copy of recipes/ and egs/mini/; returns (egs dir, output)."""
    root = tmp_path_factory.mktemp("blockasr")
    shutil.copytree(REPO / "recipes", root / "recipes", ignore=shutil.ignore_patterns("__pycache__"))
    egs = root / "egs" / "mini"
    shutil.copytree(REPO / "egs" / "mini", egs, ignore=shutil.ignore_patterns("data", "exp", "RESULTS.md"))
    for conf in (egs / "conf").glob("*.yaml"):  # the smaller vocabulary; checkpoints for 100 steps
        cfg = yaml.safe_load(conf.read_text())
        cfg["data"].update(tokenizer=f"../data/lang/bpe_{VOCAB}.model", valid_max_utterances=20)
        cfg["optim"].update(warmup_steps=20, checkpoint_every=50, valid_every=50, ctc_warmup_steps=50)
        conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(egs / "run.sh"), "--shared", str(_shared_text(root)), *SHORT_RUN], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return egs, proc


def _decode_dirs(egs: Path) -> list[Path]:
    return sorted(p.parent for p in (egs / "exp").glob("*/decode/*/*/summary.json"))


def test_every_stage_leaves_its_outputs(mini):
    egs, _ = mini
    data, exp = egs / "data", egs / "exp"
    manifests = {p.stem: p.read_text().splitlines() for p in (data / "manifests").glob("*.jsonl")}
    assert len(manifests["tts_train"]) == 150
    assert manifests["tts_valid"] and manifests["tts_heldout"]
    assert {json.loads(line)["speaker"] for line in manifests["tts_heldout"]}.isdisjoint(
        json.loads(line)["speaker"] for line in manifests["tts_train"])
    assert (data / "lang" / f"bpe_{VOCAB}.model").is_file() and (data / "cmvn.json").is_file()
    models = [p.parent.name for p in exp.glob("*/.train.done")]
    assert models
    for m in models:
        assert (exp / m / ".export.done").is_file()
        assert {"config.yaml", "model.pt", "tokenizer.model"} <= {p.name for p in (exp / m / "model").iterdir()}
        steps = [int(line.split(",")[0]) for line in (exp / m / "train.csv").read_text().splitlines()[1:]]
        assert steps[-1] == 100
    stages = {int(line.split("\t")[0]) for line in (exp / "timing.tsv").read_text().splitlines()}
    assert stages == {0, 1, 2, 3, 4, 5}
    assert _decode_dirs(egs) and all((d / ".done").is_file() for d in _decode_dirs(egs))


def test_decode_summaries_are_well_formed(mini):
    egs, _ = mini
    n_heldout = len((egs / "data" / "manifests" / "tts_heldout.jsonl").read_text().splitlines())
    for d in _decode_dirs(egs):
        s = json.loads((d / "summary.json").read_text())
        decoder, _, block = d.parent.name.rpartition("-")
        assert (s["decoder"], s["block_ms"]) == (decoder, block if block == "full" else int(block))
        assert s["utterances"] == min(MAX_UTTS, n_heldout) and s["unreadable"] == 0
        assert isinstance(s["wer"], float) and s["wer"] >= 0
        assert s["rtf"] > 0 and 0 <= s["latency_ms_p50"] <= s["latency_ms_p90"]
        assert not any(math.isnan(s[k]) for k in ("rtf", "latency_ms_p50", "latency_ms_p90"))
        hyp = (d / "hyp.txt").read_text().splitlines()
        ref = (d / "ref.txt").read_text().splitlines()
        assert len(hyp) == len(ref) == s["utterances"]


def test_results_md_has_the_numbers(mini):
    egs, proc = mini
    table = (egs / "RESULTS.md").read_text()
    assert table.startswith("# mini")
    for d in _decode_dirs(egs):
        s = json.loads((d / "summary.json").read_text())
        model, setting = d.parents[2].name, d.parent.name
        decoder, _, block = setting.rpartition("-")
        row = f"| {model} | {decoder} | {block} | {d.name} | {s['wer']:.2f} | {s['rtf']:.3f} |"
        assert row in table
    assert "## Stage times" in table and "| 3 train |" in table and "| **total** |" in table
    assert table in proc.stdout  # stage 6 prints it
