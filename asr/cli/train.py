"""Train a model from an experiment YAML; a folder with checkpoints is resumed where it stopped.

Examples:
  asr train --config egs/mini/conf/sar.yaml --out exp/mini_sar
  torchrun --nproc-per-node 2 -m blockasr train --config C --out D      # data parallel
  asr train --config C --out D --max-seconds 3600    # stop cleanly after an hour; run again to go on
"""

from __future__ import annotations

import argparse

from asr.cli import require


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (model, data, optim, features)")
    p.add_argument("--out", required=True, help="experiment folder (checkpoints, logs, curves.png)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget from the start of the command: stop at the next step boundary "
                        "after it, with a checkpoint, so that running the command again continues")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and numba (default: their choice; on 2 cores, 1 thread trained "
                        "faster than 2 with another job on the other core, 2 gave 1.35x the steps alone)")


def run(args: argparse.Namespace) -> int:
    import time

    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    require("--config", args.config)  # before torch: a typo is reported at once
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
    import dataclasses

    from asr.train import Trainer, load_experiment

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))  # CTC forced alignment
    cfg = load_experiment(args.config)
    if args.max_steps is not None:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=args.max_steps))
    Trainer(cfg, args.out, device=args.device, progress=not args.no_progress).train(deadline)
    return 0
