"""Checkpoints: atomic writes, the newest for resume, averaging of the last N."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import torch

__all__ = ["save_atomic", "list_checkpoints", "latest_checkpoint", "load_latest_good", "average_checkpoints",
           "prune"]

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


# Test hook (tests/test_train_crash.py): when this variable names the file being saved
# (e.g. "checkpoint-6.pt"), save_atomic leaves half of the temp file written and SIGKILLs its own
# process, the deterministic stand-in for a kill during a checkpoint write.
KILL_DURING_SAVE_ENV = "BLOCKASR_TEST_KILL_DURING_SAVE"


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then os.replace (and fsync the folder):
    a kill never leaves a half-written checkpoint under the final name, only a ``.tmp`` file that
    :func:`load_latest_good` removes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        if os.environ.get(KILL_DURING_SAVE_ENV) == path.name:
            f.truncate(f.tell() // 2)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(exp_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>.pt`` files in ``exp_dir``, oldest first."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in exp_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(exp_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(exp_dir)
    return ckpts[-1] if ckpts else None


def load_latest_good(exp_dir: str | Path, map_location=None) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``exp_dir`` that loads, and its contents; None if there is none.

    Leftover ``checkpoint-*.pt.tmp`` files (a write that was killed) are removed. A checkpoint that
    does not load (truncated, garbage) is reported on one stderr line naming it and skipped, so the
    previous good one is used; the bad file is left in place for inspection.
    """
    exp_dir = Path(exp_dir)
    if exp_dir.is_dir():
        for tmp in exp_dir.glob("checkpoint-*.pt.tmp"):
            tmp.unlink()
    for path in reversed(list_checkpoints(exp_dir)):
        try:
            ck = torch.load(path, map_location=map_location, weights_only=False)
            if not isinstance(ck, dict) or "model" not in ck:
                raise ValueError("not a training checkpoint")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped the same way
            why = (str(e).splitlines() or [""])[0][:120]
            print(f"corrupt checkpoint {path} skipped ({type(e).__name__}: {why})", file=sys.stderr)
            continue
        return path, ck
    return None


def prune(exp_dir: str | Path, keep: int) -> None:
    for p in list_checkpoints(exp_dir)[:-keep] if keep > 0 else []:
        p.unlink()


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of ``paths`` (float64 accumulation; integer buffers
    are taken from the last checkpoint)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    last = None
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=False)["model"]
        last = state
        for k, v in state.items():
            if v.is_floating_point():
                total[k] = total.get(k, 0) + v.double()
    return {k: (total[k] / len(paths)).to(v.dtype) if k in total else v for k, v in last.items()}
