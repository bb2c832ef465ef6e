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
  echo "{\"wer\": $wer, \"rtf\": 0.1, \"latency_ms_p50\": 20.0, \"latency_ms_p90\": 30.0, \"utterances\": 4}" \
    > "$out/summary.json"
fi
exit 0
"""


@pytest.fixture
def tree(tmp_path):
    """A copy of recipes/ and egs/ (run.sh writes into its egs folder) and a fake asr on PATH."""
    shutil.copytree(REPO / "recipes", tmp_path / "recipes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "egs", tmp_path / "egs", ignore=shutil.ignore_patterns("data", "exp", "RESULTS.md"))
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


MINI_ARGS = ["--models", "ctc sar", "--vocab-size", "128", "--test-sets", "tts_valid tts_heldout ljspeech",
             "--block-ms", "640 full", "--average-num", "5", "--cmvn-utts", "2000", "--decode-args", ""]


def test_mini_runs_every_stage_in_order_then_nothing_again(tree):
    proc, calls = _run(tree, "mini", *MINI_ARGS)
    assert proc.returncode == 0, proc.stderr
    kinds = [" ".join(c.split()[:2]) for c in calls]
    assert kinds[:6] == ["prepare tts"] * 2 + ["prepare kaldi"] * 4  # ljspeech: only as a test set
    assert calls[6] == ("tokenizer train --manifest data/manifests/tts_train.jsonl --vocab-size 128 "
                        "--out data/lang/bpe_128")
    assert calls[7] == "cmvn --manifest data/manifests/tts_train.jsonl --out data/cmvn.json --max-utts 2000"
    assert calls[8:10] == ["train --config conf/ctc.yaml --out exp/ctc",
                           "train --config conf/sar.yaml --out exp/sar"]
    assert calls[10:12] == ["average --exp exp/ctc --num 5 --out exp/ctc/averaged.pt",
                            "export --exp exp/ctc --weights exp/ctc/averaged.pt --out exp/ctc/model"]
    decodes = [c for c in calls if c.startswith("decode")]
    # streaming decoders skip `full`: ctc: ctc x 640; sar: (sar, ctc) x 640; 3 test sets each
    assert len(decodes) == 3 * 3 and not any("--block-ms full" in c for c in decodes)
    assert ("decode --model exp/sar/model --data data/manifests/tts_heldout.jsonl --decoder sar "
            "--block-ms 640 --out exp/sar/decode/sar-640/tts_heldout") in decodes
    table = (tree / "egs" / "mini" / "RESULTS.md").read_text()
    assert ("| model | decoder | block (ms) | test set | WER (%) | RTF | latency p50 (ms) | latency p90 (ms) "
            "| utterances |") in table
    assert "| sar | sar | 640 | tts_heldout | 10.00 | 0.100 | 20 | 30 | 4 |" in table
    assert "| sar | ctc | 640 | ljspeech | 20.00 | 0.100 | 20 | 30 | 4 |" in table
    assert "## Stage times" in table and "| 5 decode |" in table and "| **total** |" in table
    timing = [line.split("\t") for line in (tree / "egs" / "mini" / "exp" / "timing.tsv").read_text().splitlines()]
    assert [t[0] for t in timing] == ["0", "1", "2"] + ["3"] * 2 + ["4"] * 2 + ["5"] * 9
    assert timing[3][1] == "exp/ctc/.train.done" and all(t[2].isdigit() and float(t[3]) >= 0 for t in timing)
    # idempotent: a second run calls asr for nothing
    proc, calls = _run(tree, "mini", *MINI_ARGS)
    assert proc.returncode == 0 and calls == []


def test_mini_defaults(tree):
    """The tuned defaults of egs/mini/run.sh: one SAR model, held-out voices at 640 ms, no ljspeech."""
    proc, calls = _run(tree, "mini")
    assert proc.returncode == 0, proc.stderr
    assert [" ".join(c.split()[:2]) for c in calls][:5] == ["prepare tts"] * 2 + ["prepare kaldi"] * 3
    decodes = [c for c in calls if c.startswith("decode")]
    assert decodes and all("tts_heldout" in c and "--block-ms 640" in c for c in decodes)


def test_stage_range_and_markers(tree):
    assert _run(tree, "mini", "--stop-stage", "3", "--models", "ctc sar")[0].returncode == 0
    (tree / "egs" / "mini" / "exp" / "sar" / ".train.done").unlink()
    proc, calls = _run(tree, "mini", "--stage", "3", "--stop-stage", "3", "--models", "ctc sar")
    assert proc.returncode == 0 and calls == ["train --config conf/sar.yaml --out exp/sar"]
    proc, calls = _run(tree, "mini", "--stage", "4", "--stop-stage", "4", "--models=ctc", "--average-num", "5")
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
    corpora = ("librispeech", "tedlium", "kaldi", "mini")  # the staged recipes (egs/default has its own layout)
    configs = sorted(p for c in corpora for p in (REPO / "egs" / c / "conf").glob("*.yaml"))
    have = {(p.parent.parent.name, p.stem) for p in configs}
    assert {(c, k) for c in corpora for k in ("ctc", "joint", "sar")} <= have
    for path in configs:
        cfg = load_experiment(path, vocab_size=100)
        assert cfg.model.kind == path.stem
        assert Path(cfg.data.train[0]).parent == REPO / "egs" / path.parts[-3] / "data" / "manifests"


def test_results_table_and_bad_summary_file(tmp_path):
    for model, setting, test_set, wer in [("ctc", "ctc-640", "test", 12.345), ("ctc", "ctc-full", "test", 9.0),
                                          ("ctc", "ctc-320", "dev", 14.0)]:
        d = tmp_path / model / "decode" / setting / test_set
        d.mkdir(parents=True)
        (d / "summary.json").write_text(f'{{"wer": {wer}, "rtf": 0.0421, "latency_ms_p50": 12.3, '
                                        f'"latency_ms_p90": NaN, "utterances": 7}}')
    (tmp_path / "timing.tsv").write_text("0\tdata/.prepare.done\t60\t90\n3\texp/ctc/.train.done\t100\t150\n"
                                         "3\texp/ctc/.train.done\t120\t180\n3\texp/sar/.train.done\t240\t300.5\n")
    assert results.collect_timing(tmp_path) == {0: (60.0, 90.0), 3: (360.0, 480.5)}  # a step's last time counts
    table = results.format_table(results.collect_results(tmp_path), "T", results.collect_timing(tmp_path))
    rows = [line for line in table.splitlines() if line.startswith("| ctc")]
    assert rows == ["| ctc | ctc | 320 | dev | 14.00 | 0.042 | 12 | - | 7 |",
                    "| ctc | ctc | 640 | test | 12.35 | 0.042 | 12 | - | 7 |",
                    "| ctc | ctc | full | test | 9.00 | 0.042 | 12 | - | 7 |"]
    assert "| 0 prepare | 1.0 | 1.5 | 1.50 |" in table and "| 3 train | 6.0 | 8.0 | 1.33 |" in table
    assert "| **total** | **7.0** | **9.5** | **1.36** |" in table
    (tmp_path / "timing.tsv").write_text("0\tdata/.prepare.done\t60\n")  # no CPU column: older runs
    assert results.format_timing(results.collect_timing(tmp_path))[-1] == "| **total** | **1.0** | **-** | **-** |"
    assert "Stage times" not in results.format_table({}, "T", {})
    (tmp_path / "ctc" / "decode" / "ctc-full" / "test" / "summary.json").write_text("{}")
    assert results.main(["--exp", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 1
    (tmp_path / "ctc" / "decode" / "ctc-full" / "test" / "summary.json").write_text('{"wer": 1}')
    (tmp_path / "timing.tsv").write_text("x\n")
    assert results.main(["--exp", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 1
