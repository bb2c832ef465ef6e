"""Training-step throughput on the GPU: the CTC-only phase against every head, and what the
all-heads step spends its time on.

    python benchmarks/train_step.py --config egs/default/conf/sar.yaml --manifest egs/default/data/manifests/train.jsonl

Draws batches like the trainer does (``train_flops.draw_batch``: real durations and transcripts of
``--manifest``, random features), moves them to the device first, then times ``--steps`` optimizer
steps (forward, backward, clip, AdamW; bf16 autocast) after ``--warmup`` untimed ones, for:

- ``ctc``: the CTC warm-up phase (CTC head alone, full context);
- ``all``: every head, dynamic blocks drawn as in training;
- ``all, no cuDNN attention``: the same with SDPA's cuDNN backend off
  (``torch.backends.cuda.enable_cudnn_sdp(False)``; ``optim.cudnn_attention: false``).

Then profiles 3 all-heads steps with ``torch.profiler`` and lists the operators with the most host
(CPU) time and the most device time. Prints a table; writes benchmarks/results/train_step_<device>.md
and .json. The feature computation and the data pipeline are left out: this is the model step alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_flops import draw_batch  # noqa: E402

from asr.data import read_manifest  # noqa: E402
from asr.models import build_model  # noqa: E402
from asr.tokenizer import Tokenizer  # noqa: E402
from asr.train import load_experiment  # noqa: E402
from asr.train.optim import adamw_with_warmup  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(model, opt, batches, device, mode: str, gen: torch.Generator, bf16: bool) -> None:
    for feats, feat_lens, tokens, token_lens, _ in batches:
        ctc_only = mode == "ctc"
        block, left = (None, None) if ctc_only else model.encoder.sample_block_config(gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            losses = model(feats, feat_lens, tokens, token_lens, block, left, ctc_only=ctc_only)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--manifest", required=True, help="utterances to draw batch shapes and transcripts from")
    p.add_argument("--tokenizer", default=None, help="default: the config's data.tokenizer")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-seconds", type=float, default=None, help="default: the config's data.batch_seconds")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_experiment(args.config)
    tok = Tokenizer(args.tokenizer or cfg.data.tokenizer)
    rows = read_manifest(args.manifest)
    seconds = args.batch_seconds or cfg.data.batch_seconds
    n = args.warmup + args.steps
    batches = []
    for i in range(n):
        feats, feat_lens, tokens, token_lens, audio = draw_batch(rows, tok, seconds, cfg.data.max_utterances or 10**9, i)
        batches.append((feats.to(device), feat_lens.to(device), tokens.to(device), token_lens.to(device), audio))
    audio = sum(b[4] for b in batches[args.warmup:])
    model = build_model(cfg.model).to(device).train()
    opt, _ = adamw_with_warmup(model, 1e-4, (0.9, 0.98), 1e-3, 100)
    results = []
    for mode, cudnn in (("ctc", True), ("all", True), ("all", False)):
        if device.type == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
        gen = torch.Generator().manual_seed(0)
        run_steps(model, opt, batches[: args.warmup], device, mode, gen, cfg.optim.bf16)
        _sync(device)
        t0 = time.perf_counter()
        run_steps(model, opt, batches[args.warmup:], device, mode, gen, cfg.optim.bf16)
        _sync(device)
        dt = time.perf_counter() - t0
        row = {"mode": mode if cudnn else f"{mode}, no cuDNN attention", "steps_per_s": args.steps / dt,
               "audio_s_per_s": audio / dt, "ms_per_step": 1000 * dt / args.steps}
        results.append(row)
        print(f"{row['mode']:28s} {row['steps_per_s']:6.2f} steps/s  {row['audio_s_per_s']:9.0f} audio s/s  "
              f"{row['ms_per_step']:7.1f} ms/step", flush=True)
    best = max(results[1:], key=lambda r: r["audio_s_per_s"])
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(best["mode"] == "all")
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        run_steps(model, opt, batches[args.warmup: args.warmup + 3], device, "all", torch.Generator().manual_seed(1),
                  cfg.optim.bf16)
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    cpu_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    dev_table = prof.key_averages().table(sort_by=sort, row_limit=15)
    print(cpu_table)
    print(dev_table)
    ratio = best["audio_s_per_s"] / results[0]["audio_s_per_s"]
    name = f"train_step_{device.type}"
    RESULTS.mkdir(exist_ok=True)
    meta = {"config": args.config, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch_seconds": seconds, "steps": args.steps, "params": sum(q.numel() for q in model.parameters())}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [f"# Training step throughput ({meta['device']})", "",
             f"`python benchmarks/train_step.py --config {args.config}`: {args.steps} timed steps after "
             f"{args.warmup} warm-up ones, batches of <= {seconds:.0f} padded s, {meta['params'] / 1e6:.2f}M parameters.",
             "", "| mode | steps/s | audio s per s | ms per step |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['steps_per_s']:.2f} | {r['audio_s_per_s']:.0f} | {r['ms_per_step']:.1f} |"
              for r in results]
    lines += ["", f"All heads (best) keep {100 * ratio:.0f} % of the CTC-only phase's audio throughput.", "",
              "Host (CPU) time by operator, 3 all-heads steps:", "", "```", cpu_table, "```", "",
              "Device time by operator:", "", "```", dev_table, "```", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print(f"all heads keep {100 * ratio:.0f} % of the CTC-only throughput; wrote {RESULTS / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
