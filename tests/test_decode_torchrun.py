"""`asr decode` under torchrun (streaming/shard.py): 2 CPU processes give the files of one process,
a rerun resumes from the shards written, and a rank that fails or dies is named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asr.data import read_manifest
from blockasr.cli import main as asr_main
from streaming.shard import Decoded, merge_decoded, plan_shards

ROOT = Path(__file__).resolve().parents[1]

# Runs `asr decode` with rank FAIL_RANK failing: "raise" once shard 0 is complete (so a rerun has a
# shard to keep), "exit" at once (os._exit: the process dies, no error file, no message).
_LAUNCH = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import streaming.cli.decode as decode
real = decode.decode_rows

def decode_rows(*args, **kwargs):
    if int(os.environ["RANK"]) == {rank}:
        if {how!r} == "exit":
            os._exit(3)
        while not list(Path({shards!r}).glob("*-0-of-2.done")):
            time.sleep(0.2)
        raise RuntimeError("injected failure")
    return real(*args, **kwargs)

decode.decode_rows = decode_rows
from blockasr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _decode_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["decode", "--model", str(model), "--data", str(data), "--decoder", "sar", "--block-ms", "320",
            "--out", str(out), "--quiet"]


def _torchrun(argv: list[str], tmp_path: Path, fail: tuple[int, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    if fail is None:
        cmd += ["-m", "blockasr"]
    else:
        script = tmp_path / "launch.py"
        shards = str(Path(argv[argv.index("--out") + 1]) / "shards")
        script.write_text(_LAUNCH.format(root=str(ROOT), rank=fail[0], how=fail[1], shards=shards))
        cmd += [str(script)]
    return subprocess.run(cmd + argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture
def data(tts_corpus, tmp_path) -> Path:
    """The TTS utterances, two references changed (so there are errors to score) and one row whose
    audio is missing (unreadable)."""
    rows = read_manifest(tts_corpus / "all.jsonl")
    rows[1] = {**rows[1], "text": "GOOD EVENING TO YOU ALL"}
    rows[4] = {**rows[4], "text": "OPEN DOOR"}
    rows.append({**rows[0], "id": "utt9-missing", "audio": str(tmp_path / "missing.wav")})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _same_as_single(single: Path, sharded: Path) -> None:
    for name in ("hyp.txt", "ref.txt", "errors.txt"):
        assert (sharded / name).read_text() == (single / name).read_text(), name
    one, two = (json.loads((d / "summary.json").read_text()) for d in (single, sharded))
    for key in ("wer", "substitutions", "deletions", "insertions", "utterances", "unreadable", "audio_seconds"):
        assert two[key] == one[key], key
    assert two["processes"] == 2 and "processes" not in one


def test_plan_shards_balances_by_duration() -> None:
    assert plan_shards([1, 5, 2, 2], 2) == [[1], [0, 2, 3]]
    durations = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0]
    shards = plan_shards(durations, 3)
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [sum(durations[i] for i in s) for s in shards] == [13.0, 13.0, 13.0]
    assert plan_shards(durations, 3) == shards  # deterministic
    assert plan_shards([2.0, 2.0], 4) == [[0], [1], [], []]  # more ranks than utterances: empty shards


def test_merge_follows_the_manifest_order() -> None:
    a = Decoded(["u1", "u3"], ["A", "C"], ["a", "c"], [1.0, 3.0], [0.1, 0.3], [1.0, 3.0], unreadable=1)
    b = Decoded(["u2"], ["B"], ["b"], [2.0], [0.2], [2.0])
    merged = merge_decoded([a, b], ["u1", "u2", "u3"])
    assert merged == Decoded(["u1", "u2", "u3"], ["A", "B", "C"], ["a", "b", "c"], [1.0, 2.0, 3.0],
                             [0.1, 0.2, 0.3], [1.0, 2.0, 3.0], unreadable=1)


def test_two_processes_equal_one_and_resume(tiny_model_dir, data, tmp_path, capsys) -> None:
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert asr_main(_decode_args(tiny_model_dir, data, single)) == 0
    assert json.loads((single / "summary.json").read_text())["wer"] > 0  # the changed references

    # rank 1 fails after rank 0 wrote its shard: a clear error naming the rank, shard 0 kept
    failed = _torchrun(_decode_args(tiny_model_dir, data, sharded), tmp_path, fail=(1, "raise"))
    assert failed.returncode != 0
    assert "rank 1 of 2 failed on its shard: RuntimeError: injected failure" in failed.stderr
    kept = list((sharded / "shards").glob("*-0-of-2.json"))
    assert len(kept) == 1 and not (sharded / "hyp.txt").exists()
    mtime = kept[0].stat().st_mtime_ns

    # the rerun keeps shard 0, decodes shard 1, and gives the single process's files
    rerun = _torchrun(_decode_args(tiny_model_dir, data, sharded), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "rank 0: shard 0 of 2 already decoded" in rerun.stderr
    assert kept[0].stat().st_mtime_ns == mtime
    assert len(list((sharded / "shards").glob("*.done"))) == 2
    _same_as_single(single, sharded)
    assert json.loads(rerun.stdout.strip().splitlines()[-1]) == json.loads((sharded / "summary.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_rank_is_named_and_rank_0_does_not_wait_forever(tiny_model_dir, data, tmp_path) -> None:
    """Outside torchrun's watch (ranks started by hand, as a cluster scheduler would): rank 1 dies
    without a word; rank 0 sees its heartbeat stop and fails naming it."""
    out = tmp_path / "dec"
    script = tmp_path / "launch.py"
    script.write_text(_LAUNCH.format(root=str(ROOT), rank=1, how="exit", shards=str(out / "shards")))
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, str(script), *_decode_args(tiny_model_dir, data, out),
                                       "--rank-timeout", "3"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        _, err0 = procs[0].communicate(timeout=300)
        procs[1].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 3
    assert procs[0].returncode == 2
    assert "asr decode: error: rank 1 stopped: no sign of life for 3 s and shard 1 is not written" in err0
