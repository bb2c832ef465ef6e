"""Crash safety of training: SIGKILLed runs resume to the uninterrupted run's weights bit for bit;
corrupt or half-written checkpoints are skipped with a message naming them."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from asr.train import Trainer, list_checkpoints, load_experiment
from asr.train.checkpoint import KILL_DURING_SAVE_ENV

from tests.test_train import experiment  # noqa: F401 - the shared fixture

_REPO = Path(__file__).resolve().parents[1]


def _short(experiment, steps, every):
    cfg = yaml.safe_load(experiment.read_text())
    cfg["optim"].update(max_steps=steps, checkpoint_every=every, keep_checkpoints=100)
    experiment.write_text(yaml.safe_dump(cfg))
    return experiment


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(experiment, tmp_path, capsys):
    cfg = load_experiment(_short(experiment, 4, 2))
    out = tmp_path / "exp"
    Trainer(cfg, out, device="cpu", progress=False).train()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2.pt", "checkpoint-4.pt"]
    bad = out / "checkpoint-4.pt"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    (out / "checkpoint-6.pt").write_text("garbage, not a checkpoint")
    (out / "checkpoint-8.pt.tmp").write_bytes(b"half a write")  # a killed save_atomic
    capsys.readouterr()
    resumed = Trainer(cfg, out, device="cpu", progress=False)
    err = capsys.readouterr().err.splitlines()
    assert resumed.step == 2
    reported = [line.split(" skipped")[0] for line in err if line.startswith("corrupt checkpoint")]
    assert reported == [f"corrupt checkpoint {out / 'checkpoint-6.pt'}", f"corrupt checkpoint {bad}"]
    assert any(f"resumed from {out / 'checkpoint-2.pt'}" in line for line in err)
    assert not (out / "checkpoint-8.pt.tmp").exists()


def _train(config, out, env=None):
    cmd = [sys.executable, "-m", "blockasr", "train", "--config", str(config), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(_REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _logged_steps(out):
    try:
        return max(0, len((out / "train.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_at_five_points_then_resume_is_bit_exact(experiment, tmp_path):
    steps, every = 12, 2
    config = _short(experiment, steps, every)
    straight = tmp_path / "straight"
    assert _train(config, straight).wait() == 0

    rng = random.Random(19)
    kill_after = sorted(rng.sample(range(1, steps), 4))  # kill once train.csv shows this step
    mid_save = rng.choice([s for s in range(every, steps, every) if s not in kill_after])
    out = tmp_path / "crashed"
    # kill 1: inside the write of checkpoint-<mid_save>.pt (the temp file is left half written)
    p = _train(config, out, {KILL_DURING_SAVE_ENV: f"checkpoint-{mid_save}.pt"})
    assert p.wait() == -signal.SIGKILL
    assert (out / f"checkpoint-{mid_save}.pt.tmp").exists()
    assert not (out / f"checkpoint-{mid_save}.pt").exists()
    # kills 2-5: SIGKILL from outside once the run has logged the chosen step
    for k in kill_after:
        p = _train(config, out)
        while _logged_steps(out) < k and p.poll() is None:
            time.sleep(0.01)  # polling train.csv; the kill point need not be exact for the check
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL, f"the run ended before step {k} was killed"
    p = _train(config, out)
    assert p.wait() == 0, p.stderr.read()
    assert not list(out.glob("*.tmp"))
    final_a = torch.load(straight / f"checkpoint-{steps}.pt", weights_only=False)["model"]
    final_b = torch.load(out / f"checkpoint-{steps}.pt", weights_only=False)["model"]
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), name
