"""FLOPs of one training step, and the TFLOP/s and audio hours per GPU-hour of measured runs.

    python benchmarks/train_flops.py --config egs/default/conf/sar.yaml --tokenizer models/default/tokenizer.model \
        --manifest VALID.jsonl --sessions benchmarks/results/train_h200_default/sessions.jsonl

Counts the forward + backward FLOPs (``torch.utils.flop_counter``: matrix products, convolutions
and attention, the masked parts included) of the experiment's model on a batch drawn like the
trainer draws one: utterances of ``--manifest`` (durations and transcripts; the audio is not read,
features are random) up to ``data.batch_seconds`` of padded audio, once with the CTC head alone
(``optim.ctc_warmup_steps``) and once with every head at a 640 ms block. The count runs on the CPU
in float32 (FLOPs do not depend on the device). Each session of ``--sessions`` (written by
egs/default/local/train_timed.py on the GPU machine) then gives the achieved TFLOP/s per GPU (FLOPs
per audio second x the logged audio seconds per second / GPUs) and audio hours per GPU-hour.

Writes benchmarks/results/train_flops.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from asr.data import read_manifest
from asr.models import build_model
from asr.tokenizer import Tokenizer
from asr.train import load_experiment

RESULTS = Path(__file__).parent / "results"


def draw_batch(rows: list[dict], tokenizer: Tokenizer, batch_seconds: float, max_utts: int, seed: int):
    """Random feats (B, T, 80) and real token sequences of a batch of <= batch_seconds padded audio."""
    rng = random.Random(seed)
    rows = rows[:]
    rng.shuffle(rows)
    # the sampler groups similar durations: take a run of neighbours in sorted order
    rows.sort(key=lambda r: r["duration"])
    start = rng.randrange(len(rows))
    chosen: list[dict] = []
    for r in rows[start:] + rows[:start]:
        longest = max([r["duration"]] + [c["duration"] for c in chosen])
        if (len(chosen) + 1) * longest > batch_seconds or len(chosen) == max_utts:
            break
        chosen.append(r)
    feat_lens = torch.tensor([int(r["duration"] * 100) for r in chosen])
    tokens = [tokenizer.encode(r["text"]) for r in chosen]
    token_lens = torch.tensor([len(t) for t in tokens])
    padded = torch.zeros(len(chosen), int(token_lens.max()), dtype=torch.long)
    for i, t in enumerate(tokens):
        padded[i, : len(t)] = torch.tensor(t)
    feats = torch.randn(len(chosen), int(feat_lens.max()), 80)
    return feats, feat_lens, padded, token_lens, sum(r["duration"] for r in chosen)


def step_flops(model, batch, ctc_only: bool) -> int:
    feats, feat_lens, tokens, token_lens, _ = batch
    counter = FlopCounterMode(display=False)
    with counter:
        losses = model(feats, feat_lens, tokens, token_lens, None if ctc_only else 16, None if ctc_only else 4,
                       ctc_only=ctc_only)
        losses.total.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--tokenizer", required=True, help="sentencepiece model (token counts of the transcripts)")
    p.add_argument("--manifest", required=True, help="utterances to draw batches from (durations, texts)")
    p.add_argument("--sessions", default=None, help="sessions.jsonl of GPU runs (train_timed.py)")
    p.add_argument("--batches", type=int, default=3, help="batches to average the count over")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = Tokenizer(args.tokenizer)
    cfg = load_experiment(args.config, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    rows = read_manifest(args.manifest)
    per = {"ctc_only": [], "all_heads": []}
    audio = []
    for i in range(args.batches):
        batch = draw_batch(rows, tokenizer, cfg.data.batch_seconds, cfg.data.max_utterances, seed=i)
        audio.append(batch[4])
        for name in per:
            per[name].append(step_flops(model, batch, ctc_only=name == "ctc_only"))
            print(f"batch {i}: {len(batch[1])} utts, {batch[4]:.0f} s audio, {name}: {per[name][-1] / 1e12:.2f} TFLOP")
    flops = {k: sum(v) / len(v) for k, v in per.items()}
    audio_per_batch = sum(audio) / len(audio)
    result = {"config": args.config, "params": sum(p.numel() for p in model.parameters()),
              "batch_seconds": cfg.data.batch_seconds, "audio_seconds_per_batch": round(audio_per_batch, 1),
              "tflop_per_step": {k: round(v / 1e12, 3) for k, v in flops.items()},
              "tflop_per_audio_second": {k: round(v / 1e12 / audio_per_batch, 5) for k, v in flops.items()},
              "sessions": []}
    lines = ["# FLOPs of a training step and achieved TFLOP/s", "",
             f"`{args.config}`, {result['params'] / 1e6:.1f}M parameters, batches of <= {cfg.data.batch_seconds:.0f} "
             f"padded seconds drawn from `{Path(args.manifest).name}` ({audio_per_batch:.0f} s of audio on average, "
             f"{args.batches} batches); forward + backward counted by torch.utils.flop_counter (CPU, float32).", "",
             "| step | TFLOP / step | GFLOP / audio second |", "|---|---|---|"]
    for k, v in flops.items():
        lines.append(f"| {k} | {v / 1e12:.2f} | {v / 1e9 / audio_per_batch:.1f} |")
    if args.sessions:
        lines += ["", f"Measured runs (`{args.sessions}`); the CTC-only sessions ran inside the CTC warm-up. "
                  "TFLOP/s per GPU = FLOPs per audio second x audio seconds per second / GPUs.", "",
                  "| session | GPUs | steps | heads | steps/s | audio s / s (all GPUs) | audio h / GPU-hour | TFLOP/s per GPU |",
                  "|---|---|---|---|---|---|---|---|"]
        ctc_warmup = cfg.optim.ctc_warmup_steps
        for n, line in enumerate(open(args.sessions)):
            s = json.loads(line)
            gpus = s.get("gpus", 1)
            heads = "ctc_only" if s["end_step"] <= ctc_warmup else "all_heads" if s["start_step"] >= ctc_warmup else None
            xrt = s.get("audio_x_realtime_logged")
            if heads is None or not xrt or xrt != xrt:  # mixed session, or no logged rows (NaN)
                continue
            tflops = flops[heads] / audio_per_batch * xrt / gpus / 1e12
            row = {"session": n, "gpus": gpus, "steps": f"{s['start_step']}-{s['end_step']}", "heads": heads,
                   "steps_per_s": s["steps_per_s"], "audio_x_realtime": xrt,
                   "audio_hours_per_gpu_hour": round(xrt / gpus, 0), "tflops_per_gpu": round(tflops, 2)}
            result["sessions"].append(row)
            lines.append(f"| {n} | {gpus} | {row['steps']} | {heads} | {s['steps_per_s']:.2f} | {xrt:.0f} | "
                         f"{xrt / gpus:.0f} | {tflops:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_flops.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "train_flops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
