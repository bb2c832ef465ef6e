"""A fast start: building the ``asr`` parser and printing every subcommand's ``--help`` imports no
torch (timings are in benchmarks/cli_start.py, not here), and the constants that the command line
repeats to stay torch-free agree with the library's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter: the whole parser, then `--help` of the top level and of every subcommand
# (serve and stream have their own parsers in server/cli.py), then report what was imported.
_HELP_EVERYTHING = """
import contextlib, io, json, sys
from blockasr.cli import _COMMANDS, _PASSTHROUGH, build_parser, main
build_parser()
codes = {}
for name in [None] + [c for c, _, _ in _COMMANDS] + list(_PASSTHROUGH):
    argv = ["--help"] if name is None else [name, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            codes[str(name)] = [e.code, out.getvalue()[:200]]
heavy = sorted(m for m in ("torch", "torchaudio", "numba", "sentencepiece", "jiwer", "matplotlib") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_of_every_command_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", _HELP_EVERYTHING], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    names = ["None", "prepare", "tokenizer", "cmvn", "train", "train-lm", "average", "export", "transcribe", "decode",
             "serve", "stream"]
    assert sorted(report["codes"]) == sorted(names)
    for name, (code, text) in report["codes"].items():
        assert code == 0, name
        prog = "asr" if name == "None" else f"asr {name}"
        assert text.startswith(f"usage: {prog} "), (name, text)


def test_subcommand_help_is_complete(capsys):
    """Only the asked-for subcommand's module is imported, and its help is the full one."""
    from blockasr.cli import main

    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    out = capsys.readouterr().out
    for flag in ("--format", "--cue-max-s", "--cue-max-lines", "--cue-max-chars", "--block-ms", "--threads"):
        assert flag in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("prepare", "transcribe", "decode", "serve", "stream"))


def test_the_torch_free_constants_agree_with_the_library():
    from asr.encoder.conformer import FRAME_MS
    from asr.inference import DEFAULT_MODEL_DIR
    from asr.inference import FRAME_MS as INFERENCE_FRAME_MS
    from asr.models.io import default_model_dir

    assert INFERENCE_FRAME_MS == FRAME_MS
    assert DEFAULT_MODEL_DIR == default_model_dir()


def test_default_threads_are_one_intra_and_one_inter_op():
    """The default settings use one intra-op and one inter-op thread (a shared machine is not
    flooded); 'none' leaves torch's own choice."""
    from asr.inference import InferenceConfig

    assert InferenceConfig().threads == 1
    code = ("import torch\nfrom asr.inference import InferenceConfig, _set_threads\n"
            "_set_threads(InferenceConfig().threads)\nprint(torch.get_num_threads(), torch.get_num_interop_threads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]
