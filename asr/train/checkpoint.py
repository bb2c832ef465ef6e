"""Checkpoints: atomic writes, the newest for resume, averaging of the last N."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

__all__ = ["save_atomic", "list_checkpoints", "latest_checkpoint", "average_checkpoints", "prune"]

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a kill never leaves a
    half-written checkpoint under the final name."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


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
