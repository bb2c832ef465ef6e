"""Peak training memory and step time of the encoder on long utterances: plain path against the
Blockwise Parallel Transformer (``encoder.bpt``, asr/attention/bpt.py).

    python benchmarks/bpt_memory.py --device cuda --seconds 30,60,120,300
    python benchmarks/bpt_memory.py --device cpu --seconds 10,30 --threads 1

One training step = forward of the encoder + CTC head, CTC loss, backward (no optimizer: its
state does not depend on the length). The encoder is the one of ``--config`` (default
egs/default/conf/sar.yaml: 9 layers, d 256, 4 heads, ff x3, rel positions), full context (the
widest mask), on a batch of ``--batch`` utterances of N s each: random features at 100 frames/s
(x4 subsampled to 25 encoder frames/s), random tokens at 3 per second.

Every (length, path) runs in its own subprocess, so one OOM or one allocator high-water mark does
not spill into the next. Memory:

- CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps; *activation* = that peak minus
  what was allocated before the step (weights, inputs). A ``torch.cuda.OutOfMemoryError`` is
  reported as "OOM".
- CPU: peak resident set size (``VmHWM``, reset after the warm-up step through
  /proc/self/clear_refs) minus the resident size at that point, glibc told to return every
  block of 64 KiB or more to the system on free (``MALLOC_MMAP_THRESHOLD_``); a proxy, good
  for ratios. That setting costs time (about 25 % on either path at 30 s): CPU step times are
  for comparing the two paths, not for absolute speed.

Time: mean over ``--steps`` steps after one warm-up step, synchronised on CUDA. Default precision
is bf16 autocast on CUDA (as training runs, ``optim.bf16``) and float32 on CPU; SDPA's cuDNN
backend is off as in training (``optim.cudnn_attention: false``). Prints a table; writes
benchmarks/results/bpt_memory_<device>.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(ROOT))  # the asr package of this checkout
sys.path.insert(0, str(ROOT / "benchmarks"))
from asr.encoder.config import BPTConfig  # noqa: E402
from proc_mem import status_mib  # noqa: E402
MIB = 2**20


def _encoder_cfg(config: str, bpt: dict | None):
    from asr.config import from_dict, read_yaml
    from asr.encoder import BPTConfig, EncoderConfig

    raw = (read_yaml(config) or {}).get("model", {}).get("encoder", {})
    cfg = from_dict(EncoderConfig, raw, source=f"{config}: model.encoder")
    return dataclasses.replace(cfg, bpt=BPTConfig(**bpt) if bpt is not None else None)


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args) -> dict:
    """One (seconds, path) measurement in this process; returns the result row."""
    from asr.encoder import ConformerEncoder

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
    bpt = None if args.path == "plain" else {"query_block": args.block, "key_block": args.block,
                                             "frame_block": args.frame_block}
    cfg = _encoder_cfg(args.config, bpt)
    encoder = ConformerEncoder(cfg).to(device).train()
    head = torch.nn.Linear(cfg.d_model, args.vocab).to(device)
    params = list(encoder.parameters()) + list(head.parameters())
    frames = int(round(args.seconds * 100))
    feats = torch.randn(args.batch, frames, cfg.input_dim, device=device)
    feat_lens = torch.full((args.batch,), frames, device=device)
    n_tok = max(1, int(args.seconds * 3))
    tokens = torch.randint(1, args.vocab, (args.batch, n_tok), device=device)
    token_lens = torch.full((args.batch,), n_tok, device=device)
    amp = args.precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            enc, enc_lens = encoder(feats, feat_lens)
            logp = head(enc).float().log_softmax(-1)
        loss = torch.nn.functional.ctc_loss(logp.transpose(0, 1), tokens, enc_lens, token_lens, zero_infinity=True)
        loss.backward()
        for p in params:
            p.grad = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    row = {"seconds": args.seconds, "path": args.path, "encoder_frames": int(encoder.output_lengths(feat_lens)[0]),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    sync()
    base = torch.cuda.memory_allocated(device) / MIB if device.type == "cuda" else status_mib("VmRSS")
    try:
        step()  # warm-up: CUDA context and kernels, the library code pages a CPU step touches
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        elif _reset_rss_peak():
            base = status_mib("VmRSS")  # else the peak includes the warm-up's first-touch code pages
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        row["step_s"] = (time.perf_counter() - t0) / args.steps
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        return {**row, "status": "OOM", "error": str(e).splitlines()[0][:200]}
    peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else status_mib("VmHWM")
    return {**row, "status": "ok", "peak_mib": peak, "activation_mib": peak - base, "base_mib": base}


def _run_one(args, seconds: float, path: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--path", path, "--seconds", str(seconds), "--device", args.device,
           "--config", args.config, "--batch", str(args.batch), "--block", str(args.block), "--frame-block", str(args.frame_block), "--steps", str(args.steps),
           "--threads", str(args.threads), "--precision", args.precision, "--vocab", str(args.vocab)]
    try:
        # CPU: glibc serves every block >= 64 KiB by mmap and unmaps it on free, so a freed tensor
        # leaves the resident set at once and the peak RSS follows the live tensors.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if args.device == "cpu" else None
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"seconds": seconds, "path": path, "status": f"timeout > {args.timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        oom = "out of memory" in proc.stderr.lower() or proc.returncode in (-9, 137)
        return {"seconds": seconds, "path": path, "status": "OOM" if oom else "failed", "error": tail}
    return json.loads(lines[-1])


_CPU_NOTE = ("CPU: the peak RSS holds what the warm-up step left resident (library code, allocator heap; about "
             "150 MiB more on the BPT path), so compare the activation columns. Step times include the cost "
             "of returning every freed block to the system (about 25 % on either path).")


def _cell(row: dict, key: str, fmt: str) -> str:
    return fmt.format(row[key]) if row.get("status") == "ok" else row.get("status", "?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--seconds", default="30,60,120,300", help="utterance lengths, comma-separated")
    p.add_argument("--config", default=str(ROOT / "egs/default/conf/sar.yaml"), help="its model.encoder is used")
    p.add_argument("--batch", type=int, default=1, help="utterances per step")
    p.add_argument("--block", type=int, default=BPTConfig.query_block, help="BPT query and key block (encoder frames)")
    p.add_argument("--frame-block", type=int, default=BPTConfig.frame_block,
                   help="BPT block of the feed-forward, convolution and subsampling (encoder frames)")
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per (length, path) subprocess")
    p.add_argument("--out", default=None, help="results path without suffix (default: benchmarks/results/bpt_memory_<device>)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", choices=["plain", "bpt"], default="plain", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.worker:
        args.seconds = float(args.seconds)
        print(json.dumps(worker(args)), flush=True)
        return 0
    rows = []  # the parent never touches the GPU: all of its memory is the workers' to use
    print(f"{'seconds':>8} {'path':>6} {'frames':>7} {'peak MiB':>10} {'activ. MiB':>11} {'step s':>8}", flush=True)
    for seconds in (float(s) for s in args.seconds.split(",")):
        for path in ("plain", "bpt"):
            row = _run_one(args, seconds, path)
            rows.append(row)
            print(f"{seconds:8.0f} {path:>6} {row.get('encoder_frames', '-'):>7} {_cell(row, 'peak_mib', '{:.0f}'):>10} "
                  f"{_cell(row, 'activation_mib', '{:.0f}'):>11} {_cell(row, 'step_s', '{:.3f}'):>8}", flush=True)
    device_name = next((r["device"] for r in rows if "device" in r), args.device)
    meta = {"device": device_name, "precision": args.precision, "batch": args.batch, "block": args.block,
            "frame_block": args.frame_block,
            "steps": args.steps, "threads": args.threads, "config": Path(args.config).resolve().relative_to(ROOT).as_posix()
            if Path(args.config).resolve().is_relative_to(ROOT) else args.config, "torch": torch.__version__}
    out = Path(args.out) if args.out else RESULTS / f"bpt_memory_{args.device}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    memory = "peak `torch.cuda.max_memory_allocated`" if args.device == "cuda" else "peak RSS (`VmHWM`)"
    lines = [f"# BPT against the plain encoder: training memory and step time ({device_name})", "",
             f"`python benchmarks/bpt_memory.py --device {args.device} --seconds {args.seconds}`: encoder of "
             f"`{meta['config']}` + CTC, full context, forward + backward, batch {args.batch}, {args.precision}, "
             f"BPT query/key blocks {args.block}, frame blocks {args.frame_block}, {args.threads} thread(s), torch {torch.__version__}. Memory: {memory}; "
             "activation = peak minus the memory held before the step (weights, inputs).", "",
             "| audio s | encoder frames | plain peak MiB | BPT peak MiB | plain activ. MiB | BPT activ. MiB | "
             "activ. ratio | plain step s | BPT step s |", "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["seconds"], r["path"]): r for r in rows}
    for seconds in sorted({r["seconds"] for r in rows}):
        a, b = by[(seconds, "plain")], by[(seconds, "bpt")]
        ratio = f"{a['activation_mib'] / b['activation_mib']:.1f}x" if a.get("status") == b.get("status") == "ok" else "-"
        lines.append(f"| {seconds:.0f} | {a.get('encoder_frames', b.get('encoder_frames', '-'))} | "
                     f"{_cell(a, 'peak_mib', '{:.0f}')} | {_cell(b, 'peak_mib', '{:.0f}')} | "
                     f"{_cell(a, 'activation_mib', '{:.0f}')} | {_cell(b, 'activation_mib', '{:.0f}')} | {ratio} | "
                     f"{_cell(a, 'step_s', '{:.3f}')} | {_cell(b, 'step_s', '{:.3f}')} |")
    if args.device == "cpu":
        lines += ["", _CPU_NOTE]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
