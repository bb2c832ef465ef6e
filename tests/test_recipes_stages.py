"""The staged pipeline (recipes/stages.sh) through egs/*/run.sh, with a stand-in `asr` that logs calls."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recipes import results

REPO = Path(__file__).resolve().parents[1]
FAKE_ASR = r"""#!/usr/bin/env bash
# stand-in for the asr CLI: logs its arguments, makes the outputs the next stages look for
echo "$*" >> "$ASR_LOG"
[ "${ASR_FAIL:-}" = "$1" ] && { echo "asr $1: failed" >&2; exit 3; }
if [ "$1 $2" = "prepare kaldi" ]; then
  mkdir -p "$(dirname "$4")" && echo "{\"id\": \"$3\"}" > "$4"
fi
if [ "$1" = decode ]; then
  while [ $# -gt 0 ]; do
    case $1 in --out) out=$2 ;; --decoder) dec=$2 ;; --block-ms) blk=$2 ;; esac; shift
  done
  mkdir -p "$out"
  wer=10; [ "$dec" = ctc ] && wer=20; [ "$blk" = full ] && wer=$((wer - 5))
  echo "{\"wer\": $wer}" > "$out/wer.json"
fi
exit 0
"""


@pytest.fixture
def tree(tmp_path):
    """A copy of recipes/ and egs/ (run.sh writes into its egs folder) and a fake asr on PATH."""
    shutil.copytree(REPO / "recipes", tmp_path / "recipes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "egs", tmp_path / "egs")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "asr").write_text(FAKE_ASR)
    (bin_dir / "asr").chmod(0o755)
    return tmp_path


def _run(tree, corpus, *args, fail=None):
    env = dict(os.environ, PATH=f"{tree / 'bin'}:{os.environ['PATH']}", ASR_LOG=str(tree / "calls.log"),
               PYTHON=sys.executable)
    if fail:
        env["ASR_FAIL"] = fail
    proc = subprocess.run(["bash", str(tree / "egs" / corpus / "run.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    log = tree / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return proc, calls


def test_mini_runs_every_stage_in_order_then_nothing_again(tree):
    proc, calls = _run(tree, "mini", "--block-ms", "640 full")
    assert proc.returncode == 0, proc.stderr
    kinds = [" ".join(c.split()[:2]) for c in calls]
    assert kinds[:6] == ["prepare tts"] * 2 + ["prepare kaldi"] * 4
    assert calls[6] == ("tokenizer train --manifest data/manifests/tts_train.jsonl --vocab-size 128 "
                        "--out data/lang/bpe_128")
    assert calls[7] == "cmvn --manifest data/manifests/tts_train.jsonl --out data/cmvn.json"
    assert calls[8:10] == ["train --config conf/ctc.yaml --out exp/ctc",
                           "train --config conf/sar.yaml --out exp/sar"]
    assert calls[10:12] == ["average --exp exp/ctc --num 5 --out exp/ctc/averaged.pt",
                            "export --exp exp/ctc --weights exp/ctc/averaged.pt --out exp/ctc/model"]
    decodes = [c for c in calls if c.startswith("decode")]
    # ctc: ctc x 2 blocks; sar: (sar, ctc) x 2 blocks; 3 test sets each
    assert len(decodes) == (2 + 4) * 3
    assert ("decode --model exp/sar/model --data data/manifests/tts_heldout.jsonl --decoder sar "
            "--block-ms 640 --out exp/sar/decode/sar-640/tts_heldout") in decodes
    table = (tree / "egs" / "mini" / "RESULTS.md").read_text()
    assert "| model | decoder | block (ms) | ljspeech | tts_heldout | tts_valid |" in table
    assert "| sar | sar | 640 | 10.00 | 10.00 | 10.00 |" in table
    assert "| sar | ctc | full | 15.00 | 15.00 | 15.00 |" in table
    # idempotent: a second run calls asr for nothing
    proc, calls = _run(tree, "mini", "--block-ms", "640 full")
    assert proc.returncode == 0 and calls == []


def test_stage_range_and_markers(tree):
    assert _run(tree, "mini", "--stop-stage", "3")[0].returncode == 0
    (tree / "egs" / "mini" / "exp" / "sar" / ".train.done").unlink()
    proc, calls = _run(tree, "mini", "--stage", "3", "--stop-stage", "3", "--models", "ctc sar")
    assert proc.returncode == 0 and calls == ["train --config conf/sar.yaml --out exp/sar"]
    proc, calls = _run(tree, "mini", "--stage", "4", "--stop-stage", "4", "--models=ctc")
    assert calls == ["average --exp exp/ctc --num 5 --out exp/ctc/averaged.pt",
                     "export --exp exp/ctc --weights exp/ctc/averaged.pt --out exp/ctc/model"]


def test_failure_stops_and_leaves_no_marker(tree):
    proc, calls = _run(tree, "tedlium", "--stop-stage", "2", fail="cmvn")
    assert proc.returncode == 3 and "asr cmvn: failed" in proc.stderr
    assert calls[0] == "prepare tedlium --root /data/TEDLIUM_release2 --out data/manifests --layout legacy"
    assert not (tree / "egs" / "tedlium" / "data" / ".cmvn.done").exists()
    assert (tree / "egs" / "tedlium" / "data" / ".prepare.done").exists()
    proc, calls = _run(tree, "tedlium", "--stop-stage", "2")
    assert proc.returncode == 0 and [c.split()[0] for c in calls] == ["cmvn"]


def test_options_and_corpus_specific_prepare(tree):
    proc, _ = _run(tree, "librispeech", "--no-such-option", "1")
    assert proc.returncode == 1 and "unknown option --no-such-option" in proc.stderr
    proc, calls = _run(tree, "librispeech", "--stop-stage", "0", "--download", "true",
                       "--corpus-dir", "/x/LibriSpeech", "--subsets", "dev-clean")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["prepare librispeech --root /x/LibriSpeech --out data/manifests "
                     "--subsets dev-clean --download dev-clean"]
    proc, calls = _run(tree, "kaldi", "--stop-stage", "0", "--tts-utts", "0")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[:2] for c in calls] == [["prepare", "kaldi"]] * 4
    assert calls[0].endswith("shared/corpora/speechocean762/train data/manifests/speechocean_train.jsonl")
    train = (tree / "egs" / "kaldi" / "data" / "manifests" / "train.jsonl").read_text().splitlines()
    assert [line.split('"')[3].rsplit("/", 2)[-2] for line in train] == ["speechocean762", "ljspeech-part"]


def test_help_and_every_config_loads(tree):
    from asr.train.config import load_experiment

    proc, calls = _run(tree, "tedlium", "--help")
    assert proc.returncode == 0 and "TED-LIUM release 2" in proc.stdout and calls == []
    configs = sorted(REPO.glob("egs/*/conf/*.yaml"))
    have = {(p.parent.parent.name, p.stem) for p in configs}
    assert {(c, k) for c in ("librispeech", "tedlium", "kaldi", "mini") for k in ("ctc", "joint", "sar")} <= have
    for path in configs:
        cfg = load_experiment(path, vocab_size=100)
        assert cfg.model.kind == path.stem
        assert Path(cfg.data.train[0]).parent == REPO / "egs" / path.parts[-3] / "data" / "manifests"


def test_results_table_and_bad_wer_file(tmp_path):
    for model, setting, test_set, wer in [("ctc", "ctc-640", "test", 12.345), ("ctc", "ctc-full", "test", 9.0),
                                          ("ctc", "ctc-320", "dev", 14.0)]:
        d = tmp_path / model / "decode" / setting / test_set
        d.mkdir(parents=True)
        (d / "wer.json").write_text(f'{{"wer": {wer}}}')
    table = results.format_table(results.collect_results(tmp_path), "T").splitlines()
    rows = [line for line in table if line.startswith("| ctc")]
    assert rows == ["| ctc | ctc | 320 | 14.00 | - |", "| ctc | ctc | 640 | - | 12.35 |",
                    "| ctc | ctc | full | - | 9.00 |"]
    (tmp_path / "ctc" / "decode" / "ctc-full" / "test" / "wer.json").write_text("{}")
    assert results.main(["--exp", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 1
