"""Train a transformer language model on text alone; a folder with checkpoints is resumed.

The LM uses the ASR model's tokenizer, so that it can initialise the SAR decoder's LM subnetwork
(``lm_init: OUT/lm`` in the experiment YAML) and serve shallow fusion (``asr transcribe --lm OUT/lm``).
Lines are normalised to the corpora's upper-case words. Without --valid, 500 random training lines
are held out for the validation perplexity. Writes OUT/lm (config.yaml, model.pt, tokenizer.model)
at the end, with checkpoints, train.csv, valid.csv and curves.png in OUT.

Examples:
  asr train-lm --text ../shared/text/brown.txt --tokenizer data/lang/tokenizer.model --out exp/lm
  asr train-lm --text data/train/text --kaldi --tokenizer tok.model --config conf/lm.yaml --out exp/lm

lm.yaml (every section and key optional):
  lm: {d_model: 256, n_heads: 4, n_layers: 4, dropout: 0.1}
  data: {batch_tokens: 8000, valid_lines: 500, max_line_tokens: 256}
  optim: {lr: 1.0e-3, warmup_steps: 1000, max_steps: 20000, valid_every: 500, checkpoint_every: 1000}
"""

from __future__ import annotations

import argparse

from asr.cli import require


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", nargs="+", default=None, metavar="FILE",
                   help="training text, one sentence per line (overrides data.train)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece model of the ASR model (overrides data.tokenizer)")
    p.add_argument("--out", required=True, help="experiment folder (checkpoints, logs, curves.png, lm/)")
    p.add_argument("--config", default=None, help="LM experiment YAML (sections lm, data, optim)")
    p.add_argument("--valid", default=None, help="held-out text file (default: lines held out of --text)")
    p.add_argument("--kaldi", action="store_true", default=None,
                   help="text files are Kaldi 'text' files: '<utt-id> WORDS' per line")
    p.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    require("--config", args.config)  # before torch: a typo is reported at once
    for path in args.text or []:
        require("--text", path)
    require("--valid", args.valid)
    require("--tokenizer", args.tokenizer)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
    import dataclasses

    import torch

    from asr.train.lm import LMTrainer, load_lm_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_lm_experiment(args.config, train=tuple(args.text) if args.text else None,
                             tokenizer=args.tokenizer, valid=args.valid, kaldi_ids=args.kaldi)
    if args.max_steps is not None:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=args.max_steps))
    LMTrainer(cfg, args.out, device=args.device, progress=not args.no_progress).train()
    return 0
