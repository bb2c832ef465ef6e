"""Export trained weights to a self-contained model directory (config.yaml, model.pt, tokenizer.model).

Example:
  asr export --exp exp/mini_sar --weights exp/mini_sar/avg5.pt --out models/mini --half
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, help="experiment folder (its config.yaml names the tokenizer)")
    p.add_argument("--weights", default=None, help="checkpoint or averaged weights (default: newest checkpoint)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from asr.config import load_yaml
    from asr.models.io import export_model_dir
    from asr.train.checkpoint import latest_checkpoint
    from asr.train.config import ExperimentConfig

    exp = Path(args.exp)
    cfg = load_yaml(ExperimentConfig, exp / "config.yaml")
    weights = Path(args.weights) if args.weights else latest_checkpoint(exp)
    if weights is None or not weights.is_file():
        raise FileNotFoundError(f"no weights to export ({weights or exp / 'checkpoint-*.pt'})")
    ck = torch.load(weights, map_location="cpu", weights_only=False)
    provenance = {"experiment": str(exp), "weights": weights.name, "step": ck.get("step"),
                  "averaged": ck.get("averaged"), "train": list(cfg.data.train)}
    out = export_model_dir(ck["model"], cfg.model, cfg.features, cfg.data.tokenizer, args.out,
                           half=args.half, provenance=provenance)
    print(f"wrote {out}")
    return 0
