"""``asr train`` with a wall-clock budget: stop cleanly (checkpoint written) after ``--seconds``.

A leased GPU machine runs each command for a fixed time; the number of steps that fit is not known
beforehand. The trainer stops at the first step boundary after the deadline and writes its final
checkpoint (every rank agrees on the step under torchrun); run it again with the same ``--out`` to
resume exactly there. Each session appends its throughput (steps/s, utterances/s, audio seconds per
second, peak GPU memory, number of GPUs) to ``<out>/sessions.jsonl``.

    python egs/default/local/train_timed.py --config egs/default/conf/sar.yaml --out exp/sar --seconds 420
    torchrun --standalone --nproc-per-node 2 egs/default/local/train_timed.py --config ... --seconds 420
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, required=True, help="wall-clock budget for the training loop")
    p.add_argument("--device", default=None)
    p.add_argument("--init", default=None, help="model dir to start a fresh run from (overrides the config's init)")
    args = p.parse_args()

    import torch

    from asr.train import Trainer, load_experiment

    t_start = time.time()
    deadline = time.monotonic() + args.seconds
    cfg = load_experiment(args.config)
    if args.init:
        import dataclasses

        cfg = dataclasses.replace(cfg, init=args.init)
    trainer = Trainer(cfg, args.out, device=args.device, progress=False)
    t_loop = time.time()
    first_step = trainer.step
    result = trainer.train(deadline)
    wall = time.time() - t_loop
    if not trainer.main:
        return 0
    log = Path(args.out) / "train.csv"
    rows = [r for r in csv.DictReader(open(log)) if first_step + 1 < int(float(r["step"])) <= trainer.step] \
        if log.is_file() else []
    mean = (lambda k: sum(float(r[k]) for r in rows) / len(rows)) if rows else (lambda k: float("nan"))
    session = {"start_step": first_step, "end_step": trainer.step, "loop_seconds": round(wall, 1),
               "setup_seconds": round(t_loop - t_start, 1),
               "steps_per_s": round((trainer.step - first_step) / wall, 3),
               "utt_per_s_logged": round(mean("utt_per_s"), 1),
               "audio_x_realtime_logged": round(mean("audio_x_realtime"), 1),
               "gpus": trainer.world, "batch_seconds_per_gpu": cfg.data.batch_seconds,
               "num_workers": cfg.data.num_workers,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
               "params": sum(p.numel() for p in trainer.model.parameters()),
               "last_valid": result}
    with open(Path(args.out) / "sessions.jsonl", "a") as f:
        f.write(json.dumps(session) + "\n")
    print("train_timed: " + json.dumps(session), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
