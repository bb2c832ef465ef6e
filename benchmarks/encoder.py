"""Conformer encoder speed and memory (small preset).

    python benchmarks/encoder.py                 # CPU part (2 threads); GPU part too if CUDA is available
    python benchmarks/encoder.py --minutes 1 10  # shorter memory sweep
    python benchmarks/encoder.py --skip-cpu      # GPU part only

CPU (``--threads``, default 2): streaming ``step`` latency per 640 ms block (block 16 frames, left 4
blocks) at batch 1 and 8; offline real-time factor of ``forward`` on 10 s; peak RSS of ``forward``
(no_grad, block 16 / left 4) against input length, each length in a fresh subprocess, and of
``step`` over the same stream fed in 10 s chunks (bounded state).

GPU (CUDA only): bf16 autocast forward+backward throughput (frames/s) and achieved TFLOP/s (FLOPs
counted by ``torch.utils.flop_counter`` on the SDPA run, masked work included), SDPA vs FlexAttention
for block-causal masks and full context.

Writes benchmarks/results/encoder_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from asr.encoder import ConformerEncoder, EncoderConfig

RESULTS = Path(__file__).parent / "results"
FEAT_PER_S = 100  # 10 ms feature shift
BLOCK, LEFT = 16, 4  # 640 ms blocks, 2.56 s of left context


def _encoder(cfg: EncoderConfig | None = None) -> ConformerEncoder:
    torch.manual_seed(0)
    return ConformerEncoder(cfg or EncoderConfig.small()).eval()


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


# ------------------------------------------------------------------------------------------ CPU
def bench_streaming(enc: ConformerEncoder, batch: int, seconds: float = 20.0) -> dict:
    """Feed 640 ms of features per step; time each step that emits a block."""
    x = torch.randn(batch, int(seconds * FEAT_PER_S), 80)
    chunk = BLOCK * 4  # feature frames per 640 ms
    times = []
    with torch.no_grad():
        for rep in range(2):  # first pass warms up
            state = enc.init_state(batch, BLOCK, LEFT)
            for i in range(0, x.shape[1], chunk):
                t0 = time.perf_counter()
                y, state = enc.step(x[:, i : i + chunk], state)
                if rep == 1 and y.shape[1]:
                    times.append((time.perf_counter() - t0) * 1000 / (y.shape[1] // BLOCK))
    # min is the compute cost without interference (the CPU may be shared); median and p95 include it
    return {"batch": batch, "ms_per_block_min": round(min(times), 2), "ms_per_block_median": round(_median(times), 2),
            "ms_per_block_p95": round(_pct(times, 0.95), 2), "block_ms": BLOCK * 40,
            "x_realtime_at_min": round(BLOCK * 40 / min(times), 1)}


def bench_offline(enc: ConformerEncoder, block_size: int | None, left: int | None, seconds: float = 10.0) -> dict:
    x = torch.randn(1, int(seconds * FEAT_PER_S), 80)
    lens = torch.tensor([x.shape[1]])
    with torch.no_grad():
        enc(x, lens, block_size, left)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            enc(x, lens, block_size, left)
            times.append(time.perf_counter() - t0)
    # min over runs: the CPU is shared, and interference only ever adds time
    return {"audio_s": seconds, "block_size": block_size, "left_blocks": left, "rtf": round(min(times) / seconds, 4),
            "rtf_median": round(_median(times) / seconds, 4)}


def memory_child(minutes: float, threads: int, mode: str) -> None:
    """Runs in a subprocess: peak RSS of one no_grad ``forward`` (or of ``step`` fed 10 s chunks)
    over ``minutes`` of features."""
    torch.set_num_threads(threads)
    enc = _encoder()
    x = torch.randn(1, int(minutes * 60 * FEAT_PER_S), 80)
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "forward":
            n_frames = enc(x, torch.tensor([x.shape[1]]), BLOCK, LEFT)[0].shape[1]
        else:
            state, n_frames = enc.init_state(1, BLOCK, LEFT), 0
            for i in range(0, x.shape[1], 10 * FEAT_PER_S):
                y, state = enc.step(x[:, i : i + 10 * FEAT_PER_S], state, final=i + 10 * FEAT_PER_S >= x.shape[1])
                n_frames += y.shape[1]
    elapsed = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "minutes": minutes, "encoder_frames": n_frames, "seconds": round(elapsed, 1),
                      "rtf": round(elapsed / (minutes * 60), 4), "rss_base_mb": round(rss_base),
                      "rss_peak_mb": round(rss_peak), "extra_mb": round(rss_peak - rss_base)}))


def bench_memory(minutes: list[float], threads: int, step_minutes: list[float]) -> list[dict]:
    rows = []
    for mode, lengths in (("forward", minutes), ("step", step_minutes)):
        for m in lengths:
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(m), "--memory-mode", mode,
                                  "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  memory {mode} {m} min: {rows[-1]}", flush=True)
    return rows


def run_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    enc = _encoder()
    params = sum(p.numel() for p in enc.parameters())
    print(f"CPU, {args.threads} threads, small encoder ({params / 1e6:.1f}M params)", flush=True)
    streaming = [bench_streaming(enc, b) for b in (1, 8)]
    print(f"  streaming: {streaming}", flush=True)
    offline = [bench_offline(enc, None, None), bench_offline(enc, BLOCK, LEFT)]
    print(f"  offline: {offline}", flush=True)
    memory = bench_memory(args.minutes, args.threads, args.step_minutes)
    result = {"device": "cpu", "threads": args.threads, "params": params, "streaming": streaming,
              "offline": offline, "memory": memory, "loadavg_1min": [load_start, os.getloadavg()[0]]}
    lines = [f"# Encoder on CPU ({args.threads} threads), small preset, {params / 1e6:.1f}M params", "",
             f"Host load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} cores; times above the minimum include interference from other jobs.", "",
             f"Streaming `step`, {BLOCK * 40} ms blocks ({BLOCK} frames), {LEFT} blocks left context:", "",
             "| batch | ms per block (min) | median | p95 | audio x real time at min (all streams) |",
             "|---|---|---|---|---|"]
    lines += [f"| {s['batch']} | {s['ms_per_block_min']} | {s['ms_per_block_median']} | {s['ms_per_block_p95']} | "
              f"{s['x_realtime_at_min'] * s['batch']:.1f} |" for s in streaming]
    lines += ["", "Offline `forward` on 10 s (RTF = compute time / audio time):", "",
              "| block | left | RTF (min of 5) | RTF (median) |", "|---|---|---|---|"]
    lines += [f"| {o['block_size'] or 'full'} | {o['left_blocks'] if o['left_blocks'] is not None else '-'} | "
              f"{o['rtf']} | {o['rtf_median']} |" for o in offline]
    lines += ["", f"Peak RSS (no_grad, block {BLOCK}, left {LEFT}), fresh process per row; `step` is fed 10 s chunks:", "",
              "| path | input | encoder frames | seconds | RTF | RSS before MB | peak RSS MB | extra MB |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m['mode']} | {m['minutes']} min | {m['encoder_frames']} | {m['seconds']} | {m['rtf']} | "
              f"{m['rss_base_mb']} | {m['rss_peak_mb']} | {m['extra_mb']} |" for m in memory]
    lines += ["", "`forward` memory is linear in length (activations of all frames live per layer): attention runs",
              "1024 query frames at a time against only the keys their blocks may see (no T x T mask or scores),",
              "and the Conv2d subsampling runs 1024 output frames at a time. `step` memory is bounded: the state",
              "is the left-context KV cache and the conv cache per layer.", ""]
    _write("cpu", result, lines)


# ------------------------------------------------------------------------------------------ GPU
def _train_step_flops(enc: ConformerEncoder, x, lens, bs, left) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.autocast("cuda", dtype=torch.bfloat16):
        y, _ = enc(x, lens, bs, left)
        y.float().square().mean().backward()
    enc.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def bench_gpu_train(kernel: str, bs: int | None, left: int | None, batch: int, seconds: float, iters: int) -> dict:
    cfg = dataclasses.replace(EncoderConfig.small(), kernel=kernel)
    enc = _encoder(cfg).cuda().train()
    x = torch.randn(batch, int(seconds * FEAT_PER_S), 80, device="cuda")
    lens = torch.full((batch,), x.shape[1], device="cuda")
    row = {"kernel": kernel, "block_size": bs, "left_blocks": left, "batch": batch, "seconds": seconds}
    try:
        flops = _train_step_flops(ConformerEncoder(dataclasses.replace(cfg, kernel="sdpa")).cuda().train(), x, lens, bs, left)
        opt = torch.optim.SGD(enc.parameters(), lr=1e-6)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y, y_lens = enc(x, lens, bs, left)
                loss = y.float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return int(y_lens.sum())

        for _ in range(3):
            frames = step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        row.update({"ms_per_step": round(dt * 1000, 1), "frames_per_s": round(frames / dt),
                    "audio_x_realtime": round(batch * seconds / dt), "tflops": round(flops / dt / 1e12, 1),
                    "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
    except Exception as e:  # report, don't abort the other rows
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    print(f"  {row}", flush=True)
    return row


def run_gpu(args) -> None:
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the subsampling conv algorithms
    name = torch.cuda.get_device_name()
    print(f"GPU: {name}", flush=True)
    rows = []
    for kernel in ("sdpa", "flex"):
        for bs, left in ((BLOCK, LEFT), (4, 8), (None, None)):
            rows.append(bench_gpu_train(kernel, bs, left, args.gpu_batch, args.gpu_seconds, args.gpu_iters))
    result = {"device": name, "rows": rows}
    lines = [f"# Encoder training step on {name} (small preset, bf16 autocast, fwd+bwd+SGD)", "",
             f"batch {args.gpu_batch} x {args.gpu_seconds} s; TFLOP/s from FlopCounterMode on the SDPA run "
             "(dense count incl. masked scores).", "",
             "| kernel | block | left | ms/step | frames/s | x real time | TFLOP/s | peak GB | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['block_size'] or 'full'} | {r['left_blocks'] if r['left_blocks'] is not None else '-'} | "
                     f"{r.get('ms_per_step', '')} | {r.get('frames_per_s', '')} | {r.get('audio_x_realtime', '')} | "
                     f"{r.get('tflops', '')} | {r.get('peak_mem_gb', '')} | {r.get('error', '')} |")
    _write("cuda", result, lines + [""])


def _write(device: str, result: dict, lines: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"encoder_{device}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"encoder_{device}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    p.add_argument("--step-minutes", type=float, nargs="*", default=[1, 10])
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--skip-gpu", action="store_true")
    p.add_argument("--gpu-batch", type=int, default=64)
    p.add_argument("--gpu-seconds", type=float, default=15.0)
    p.add_argument("--gpu-iters", type=int, default=10)
    p.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-mode", choices=["forward", "step"], default="forward", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.threads, args.memory_mode)
        return
    if not args.skip_cpu:
        run_cpu(args)
    if not args.skip_gpu and torch.cuda.is_available():
        run_gpu(args)


if __name__ == "__main__":
    main()
