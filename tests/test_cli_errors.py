"""Errors before work: bad arguments, files, model directories and configs are reported before any
model loads, one clear line each, exit status 2; a bad flag prints the subcommand's usage."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blockasr.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Run every case in one fresh interpreter and report (exit status, stderr) per case, then whether
# torch was imported: none of these checks may need it.
_RUN_CASES = """
import contextlib, io, json, sys
from blockasr.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append([code, err.getvalue()])
print(json.dumps({"results": results, "torch": "torch" in sys.modules}))
"""


@pytest.fixture
def files(tmp_path):
    ok = tmp_path / "ok.wav"
    sf.write(ok, np.zeros(1600, dtype=np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot a header at all")
    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    (empty_model / "config.yaml").write_text("model: {}\n")
    return {"ok": str(ok), "bad": str(bad), "missing": str(tmp_path / "missing.wav"), "dir": str(tmp_path),
            "empty_model": str(empty_model), "nowhere": str(tmp_path / "nowhere")}


def _cases(f):
    """(argv, the one error line expected last on stderr, whether the usage comes first)."""
    t = ["transcribe", f["ok"]]
    return [
        (["transcribe", f["missing"]], f"asr transcribe: error: {f['missing']}: no such audio file", False),
        (["transcribe", f["bad"]], f"asr transcribe: error: {f['bad']}: cannot read audio (", False),
        (["transcribe", f["dir"]], f"asr transcribe: error: {f['dir']}: is a directory, not an audio file", False),
        (t + ["--block-ms", "100"], "asr transcribe: error: argument --block-ms: expected a positive multiple of 40 ms",
         True),
        (t + ["--bogus-flag"], "asr transcribe: error: unrecognized arguments: --bogus-flag", True),
        (t + ["--model", f["nowhere"]], f"asr transcribe: error: model: {f['nowhere']}: no such model directory", False),
        (t + ["--model", f["empty_model"]],
         f"asr transcribe: error: model: {f['empty_model']}: not a model directory (no model.pt, tokenizer.model)", False),
        (t + ["--lm", f["nowhere"]], f"asr transcribe: error: lm: {f['nowhere']}: no such LM directory", False),
        (t + ["--lm-weight", "0.5", "--lm", "none"],
         "asr transcribe: error: lm_weight: --lm-weight needs an LM: --lm DIR (here --lm none)", False),
        (t + ["--session-context", "-1"], "asr transcribe: error: argument --session-context: expected an integer "
                                          ">= 0 (tokens of context; 0 or none = none), got -1", True),
        (t + ["--decoder", "bsbs", "--lm", "none", "--session-context", "64"], "asr transcribe: error: session_context: "
         "--session-context with --decoder bsbs needs --lm DIR (the context is the fusion LM's)", False),
        (t + ["--decoder", "ctc", "--session-context", "64"], "asr transcribe: error: session_context: "
         "--session-context works with the sar, bsbs and offline decoders; ctc has no label context to carry", False),
        (t + ["--cue-max-chars", "0"], "asr transcribe: error: argument --cue-max-chars: expected a positive integer",
         True),
        (["decode", "--data", f["nowhere"], "--out", f["dir"]],
         f"asr decode: error: --data {f['nowhere']}: no such Kaldi data dir or JSONL manifest", False),
        (["decode", "--data", f["dir"], "--out", f["dir"], "--model", f["nowhere"]],
         f"asr decode: error: model: {f['nowhere']}: no such model directory", False),
        (["decode", "--data", f["dir"], "--out", f["dir"], "--bogus"], "asr decode: error: unrecognized arguments: --bogus",
         True),
        (["train", "--config", f["nowhere"], "--out", f["dir"]], f"asr train: error: --config {f['nowhere']}: no such file",
         False),
        (["train", "--config", f["ok"], "--out", f["dir"], "--threads", "0"],
         "asr train: error: --threads: expected an integer >= 1, got 0", False),
        (["export", "--exp", f["nowhere"], "--out", f["dir"]], f"asr export: error: --exp {f['nowhere']}: no such directory",
         False),
        (["cmvn", "--manifest", f["nowhere"], "--out", f["dir"]],
         f"asr cmvn: error: --manifest {f['nowhere']}: no such file", False),
        (["average", "--exp", f["nowhere"], "--out", f["dir"]],
         f"asr average: error: --exp {f['nowhere']}: no such directory", False),
        (["tokenizer", "encode", "--model", f["nowhere"], "HELLO"],
         f"asr tokenizer: error: --model {f['nowhere']}: no such file", False),
        (["prepare", "kaldi", f["dir"], f["nowhere"], "--bogus"],
         "asr prepare kaldi: error: unrecognized arguments: --bogus", True),
    ]


def test_every_error_before_work_is_one_line_exit_2_without_torch(files):
    cases = _cases(files)
    proc = subprocess.run([sys.executable, "-c", _RUN_CASES, json.dumps([argv for argv, _, _ in cases])], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for (argv, expected, usage), (code, err) in zip(cases, report["results"]):
        lines = err.strip().splitlines()
        assert code == 2, (argv, err)
        assert lines[-1].startswith(expected), (argv, err)
        assert "Traceback" not in err
        if usage:  # argparse errors: the usage of the subcommand that was given, then the one line
            prog = " ".join(["asr"] + [a for a in argv[:2] if a in ("transcribe", "decode", "prepare", "kaldi")])
            assert lines[0].startswith(f"usage: {prog} "), (argv, err)
        else:
            assert len(lines) == 1, (argv, err)
    assert report["torch"] is False


def test_every_bad_file_is_named_and_none_is_transcribed(files, capsys):
    assert main(["transcribe", files["missing"], files["ok"], files["bad"]]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "missing.wav: no such audio file" in lines[0] and "bad.wav: cannot read audio" in lines[1]
    assert captured.out == ""


def test_unknown_config_key_is_reported_before_the_weights_load(tmp_path, capsys):
    """A model directory whose config.yaml has an unknown key: one line naming the key and the file,
    exit 2, and the weights are never read (model.pt here is not a checkpoint at all)."""
    model = tmp_path / "model"
    model.mkdir()
    text = (ROOT / "models/default/config.yaml").read_text()
    assert text.startswith("model:\n")
    (model / "config.yaml").write_text(text.replace("model:\n", "model:\n  bogus_key: 1\n", 1))
    shutil.copy(ROOT / "models/default/tokenizer.model", model / "tokenizer.model")
    (model / "model.pt").write_bytes(b"not a checkpoint")
    wav = tmp_path / "ok.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    assert main(["transcribe", str(wav), "--model", str(model)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'bogus_key'" in lines[0] and "config.yaml" in lines[0], lines


def test_unknown_experiment_key_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model:\n  vocab_size: 10\n  bogus_key: 1\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "exp")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'bogus_key'" in lines[0] and "exp.yaml" in lines[0], lines
    assert not (tmp_path / "exp").exists()
