"""Average the model weights of the last N checkpoints of an experiment.

Example:
  asr average --exp exp/mini_sar --num 5 --out exp/mini_sar/avg5.pt
"""

from __future__ import annotations

import argparse

from asr.cli import require


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, help="experiment folder with checkpoint-<step>.pt files")
    p.add_argument("--num", type=int, default=5, help="how many of the newest checkpoints (default 5)")
    p.add_argument("--out", required=True, help="output weights file (.pt)")


def run(args: argparse.Namespace) -> int:
    require("--exp", args.exp, "dir")
    if args.num < 1:
        raise ValueError(f"--num: expected an integer >= 1, got {args.num}")
    import torch

    from asr.train.checkpoint import average_checkpoints, list_checkpoints, save_atomic

    paths = list_checkpoints(args.exp)[-args.num:]
    if not paths:
        raise FileNotFoundError(f"{args.exp}: no checkpoint-<step>.pt files")
    last = torch.load(paths[-1], map_location="cpu", weights_only=False)
    save_atomic({"model": average_checkpoints(paths), "config": last["config"], "step": last["step"],
                 "averaged": [p.name for p in paths]}, args.out)
    print(f"wrote {args.out}: mean of {', '.join(p.name for p in paths)}")
    return 0
