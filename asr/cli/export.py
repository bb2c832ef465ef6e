"""Export trained weights to a self-contained model directory (config.yaml, model.pt, tokenizer.model).

Examples:
  asr export --exp exp/mini_sar --weights exp/mini_sar/avg5.pt --out models/mini --half
  asr export --model models/default --out models/default-int8 --compress block-int8
"""

from __future__ import annotations

import argparse

from asr.cli import require

COMPRESS_CHOICES = ("block-int8", "channel-int8", "tensor-int8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--exp", help="experiment folder (its config.yaml names the tokenizer)")
    src.add_argument("--model", help="an exported model directory to compress (with --compress)")
    p.add_argument("--weights", default=None, help="checkpoint or averaged weights (default: newest checkpoint)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.add_argument("--compress", choices=COMPRESS_CHOICES, default=None,
                   help="int8 weights without retraining: block-int8 = one scale per --block input columns "
                        "of each weight row (BCT), channel-int8 = per row, tensor-int8 = per matrix; "
                        "asr transcribe/serve load the result transparently (int8 kernels on CPU)")
    p.add_argument("--block", type=int, default=64, help="input columns per scale for block-int8 (default 64)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    require("--exp", args.exp, "dir")
    require("--model", args.model, "dir")
    require("--weights", args.weights)
    if args.model and not args.compress:
        raise ValueError("--model needs --compress (a model directory is already exported)")
    import torch

    from asr.config import load_yaml
    from asr.models.compress import CompressionConfig
    from asr.models.io import compress_model_dir, export_model_dir
    from asr.train.checkpoint import latest_checkpoint
    from asr.train.config import ExperimentConfig

    compression = CompressionConfig(method=args.compress, block=args.block) if args.compress else None
    if args.model:
        print(f"wrote {compress_model_dir(args.model, args.out, compression)}")
        return 0
    exp = Path(args.exp)
    cfg = load_yaml(ExperimentConfig, exp / "config.yaml")
    weights = Path(args.weights) if args.weights else latest_checkpoint(exp)
    if weights is None or not weights.is_file():
        raise FileNotFoundError(f"no weights to export ({weights or exp / 'checkpoint-*.pt'})")
    ck = torch.load(weights, map_location="cpu", weights_only=False)
    provenance = {"experiment": str(exp), "weights": weights.name, "step": ck.get("step"),
                  "averaged": ck.get("averaged"), "train": list(cfg.data.train)}
    out = export_model_dir(ck["model"], cfg.model, cfg.features, cfg.data.tokenizer, args.out,
                           half=args.half, provenance=provenance, compression=compression)
    print(f"wrote {out}")
    return 0
