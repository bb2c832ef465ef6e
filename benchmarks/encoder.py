"""Conformer encoder speed and memory (small preset).

    python benchmarks/encoder.py                 # CPU part (2 threads); GPU part too if CUDA is available
    python benchmarks/encoder.py --minutes 1 10  # shorter memory sweep
    python benchmarks/encoder.py --skip-cpu      # GPU part only
    python benchmarks/encoder.py --skip-memory   # CPU part without the memory sweep (keeps the last one)
    python benchmarks/encoder.py --fast-step-only --reps 3   # only the fast-step table -> encoder_cpu_step.md

CPU, fast step first: ms per 640 ms block of streaming ``step`` (batch 1, block 16, left 4) for the
``small`` preset (random weights) and the shipped models/default encoder, 1 and 2 threads, in one
run with the variants interleaved: ``before`` (the step as it was before issue 16, emulated: no_grad,
relative-position table recomputed every block, depthwise conv through nn.Conv1d, q/k/v as three
products, dropout module calls, the relative term through einsum and a padded skew), ``float``
(today: inference_mode, cached table, tap-sum depthwise conv, fused q/k/v, no dropout calls in eval)
and ``block-int8`` (asr export --compress block-int8 weights on fbgemm int8 kernels). Wall time min/median, and on 1 thread the thread's CPU
time (``time.thread_time``), which excludes waiting for the core on a shared host.

Then (``--threads``, default 2): streaming ``step`` latency per 640 ms block (block 16 frames, left 4
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
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import asr.encoder.layers as encoder_layers
from asr.attention import MultiHeadAttention
from asr.attention.positions import RelPositionalEncoding
from asr.encoder import ConformerEncoder, EncoderConfig
from asr.encoder.layers import CausalConvModule, FeedForward
from asr.encoder.subsampling import Conv2dSubsampling
from asr.models.compress import CompressionConfig, compress_state, decompress_state, to_int8_kernels

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
    with torch.inference_mode():
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
    with torch.inference_mode():
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
    with torch.inference_mode():
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


# ------------------------------------------------------------------------------- fast step
def _before_patches():
    """Patches that restore the pre-issue-16 step (for the before/after table)."""
    def rel_pos_uncached(self, max_dist, count, device, dtype):
        return self._compute(max_dist, count, device, dtype)

    def rel_keys_uncached(self, max_dist, count, device, dtype, scale=1.0):
        return self._compute(max_dist, count, device, dtype).permute(1, 2, 0) * scale

    def rel_scores_einsum(self, q, k_len, q_start, k_start):
        t_q = q.shape[-2]
        p = self.rel_pos(q_start + t_q - 1 - k_start, t_q + k_len - 1, q.device, q.dtype)  # (R, H, dh)
        bd = torch.einsum("bhqd,rhd->bhqr", q + self.pos_bias_v[:, None, :], p)
        return _pad_rel_shift(bd, k_len) / math.sqrt(self.head_dim)

    def project_qkv_separate(self, x):
        return self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def depthwise_conv1d(self, h):
        return self.depthwise(h.transpose(1, 2)).transpose(1, 2)

    def subsampling_relu(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x[:, None]))))
        return self.proj(h.transpose(1, 2).flatten(2))

    return {(RelPositionalEncoding, "forward"): rel_pos_uncached, (RelPositionalEncoding, "keys"): rel_keys_uncached,
            (MultiHeadAttention, "_rel_scores"): rel_scores_einsum,
            (MultiHeadAttention, "_project_qkv"): project_qkv_separate,
            (FeedForward, "forward"): lambda self, x: self.net(x),
            (encoder_layers, "_dropout"): lambda dropout, x: dropout(x),
            (encoder_layers, "_half_step"): lambda x, h: x + 0.5 * h,
            (CausalConvModule, "_depthwise"): depthwise_conv1d, (Conv2dSubsampling, "compute"): subsampling_relu}


def _pad_rel_shift(scores: torch.Tensor, k_len: int) -> torch.Tensor:
    """``rel_shift`` as it was before issue 16 (a padded copy, then a skewed view)."""
    t_q = scores.shape[-2]
    flat = torch.nn.functional.pad(scores, (0, 1)).flatten(-2)
    row = t_q + k_len - 1
    return flat[..., t_q - 1 : t_q - 1 + t_q * row].unflatten(-1, (t_q, row))[..., :k_len]


def _int8_copy(enc: ConformerEncoder) -> ConformerEncoder:
    """The encoder as ``asr export --compress block-int8`` stores it and ``load_model_dir`` runs it."""
    cfg = CompressionConfig("block-int8", block=64)
    out = ConformerEncoder(enc.cfg).eval()
    out.load_state_dict({k: v.float() for k, v in decompress_state(compress_state(enc, cfg), cfg.block).items()})
    return to_int8_kernels(out)


def _step_times(enc: ConformerEncoder, x: torch.Tensor, grad_ctx) -> list[tuple[float, float]]:
    """(wall ms, thread CPU ms) of each 640 ms step after the left context has filled."""
    chunk, out = BLOCK * 4, []
    with grad_ctx():
        state = enc.init_state(1, BLOCK, LEFT)
        for i in range(0, x.shape[1] - chunk + 1, chunk):
            w0, c0 = time.perf_counter(), time.thread_time()
            y, state = enc.step(x[:, i : i + chunk], state)
            if i >= chunk * (LEFT + 1) and y.shape[1]:
                out.append(((time.perf_counter() - w0) * 1000, (time.thread_time() - c0) * 1000))
    return out


def bench_fast_step(threads: int, reps: int = 6, seconds: float = 12.0) -> list[dict]:
    """before / float / block-int8 step of the small preset and the shipped encoder, interleaved."""
    from asr.models.io import default_model_dir, load_model_dir

    torch.set_num_threads(threads)
    encoders = {"small": _encoder(), "models/default": load_model_dir(default_model_dir()).model.encoder}
    x = torch.randn(1, int(seconds * FEAT_PER_S), 80)
    rows = []
    for name, enc in encoders.items():
        variants = {"before": (enc, torch.no_grad, _before_patches()), "float": (enc, torch.inference_mode, {}),
                    "block-int8": (_int8_copy(enc), torch.inference_mode, {})}
        times: dict[str, list] = {v: [] for v in variants}
        for rep in range(reps + 1):  # rep 0 warms up
            for v, (e, ctx, patches) in variants.items():
                saved = {key: getattr(*key) for key in patches}
                for (cls, attr), fn in patches.items():
                    setattr(cls, attr, fn)
                try:
                    t = _step_times(e, x, ctx)
                finally:
                    for (cls, attr), fn in saved.items():
                        setattr(cls, attr, fn)
                if rep:
                    times[v] += t
        for v, t in times.items():
            wall, cpu = [a for a, _ in t], [b for _, b in t]
            rows.append({"encoder": name, "variant": v, "threads": threads, "steps": len(t),
                         "wall_ms_min": round(min(wall), 2), "wall_ms_median": round(_median(wall), 2),
                         "cpu_ms_min": round(min(cpu), 2) if threads == 1 else None,
                         "cpu_ms_median": round(_median(cpu), 2) if threads == 1 else None})
            print(f"  fast step: {rows[-1]}", flush=True)
    return rows


def _fast_step_lines(rows: list[dict]) -> list[str]:
    lines = ["## Fast step: ms per 640 ms block (batch 1, block 16, left 4 blocks)", "",
             "`before` emulates the step before issue 16 (no_grad, relative-position table recomputed per block,",
             "depthwise conv through nn.Conv1d, q/k/v as three products, dropout module calls, einsum relative",
             "term); `float` is today's step (inference_mode); `block-int8` is the same encoder as `asr export",
             "--compress block-int8` stores it, on fbgemm int8 kernels. Variants interleaved in one process.",
             "CPU = the thread's own CPU time (1 thread only): the host is shared, so wall time includes",
             "waiting for a core.", "",
             "| encoder | threads | variant | wall min | wall median | CPU min | CPU median | speed-up (min, vs before) |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["encoder"], r["threads"]): r for r in rows if r["variant"] == "before"}
    for r in rows:
        b = base[(r["encoder"], r["threads"])]
        key = "cpu_ms_min" if r["cpu_ms_min"] is not None else "wall_ms_min"
        lines.append(f"| {r['encoder']} | {r['threads']} | {r['variant']} | {r['wall_ms_min']} | {r['wall_ms_median']} | "
                     f"{r['cpu_ms_min'] if r['cpu_ms_min'] is not None else '-'} | "
                     f"{r['cpu_ms_median'] if r['cpu_ms_median'] is not None else '-'} | {b[key] / r[key]:.2f}x |")
    return lines + [""]


def run_fast_step_only(args) -> None:
    load_start = os.getloadavg()[0]
    fast = [row for t in (1, 2) for row in bench_fast_step(t, reps=args.reps)]
    lines = ["# Encoder fast step on CPU", "",
             f"Host load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}.", ""]
    _write("cpu_step", {"fast_step": fast, "loadavg_1min": [load_start, os.getloadavg()[0]],
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}, lines + _fast_step_lines(fast))


def run_cpu(args) -> None:
    load_start = os.getloadavg()[0]
    fast = [row for t in (1, 2) for row in bench_fast_step(t, reps=args.reps)]
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    enc = _encoder()
    params = sum(p.numel() for p in enc.parameters())
    print(f"CPU, {args.threads} threads, small encoder ({params / 1e6:.1f}M params)", flush=True)
    streaming = [bench_streaming(enc, b) for b in (1, 8)]
    print(f"  streaming: {streaming}", flush=True)
    offline = [bench_offline(enc, None, None), bench_offline(enc, BLOCK, LEFT)]
    print(f"  offline: {offline}", flush=True)
    memory_note = ""
    if args.skip_memory:
        old = RESULTS / "encoder_cpu.json"
        memory = json.loads(old.read_text()).get("memory", []) if old.is_file() else []
        memory_note = " (not re-run: the rows of the previous run)"
    else:
        memory = bench_memory(args.minutes, args.threads, args.step_minutes)
    result = {"device": "cpu", "threads": args.threads, "params": params, "fast_step": fast, "streaming": streaming,
              "offline": offline, "memory": memory, "loadavg_1min": [load_start, os.getloadavg()[0]]}
    lines = [f"# Encoder on CPU ({args.threads} threads), small preset, {params / 1e6:.1f}M params", "",
             f"Host load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} cores; times above the minimum include interference from other jobs.", ""]
    lines += _fast_step_lines(fast)
    lines += [f"## Streaming `step` ({args.threads} threads), {BLOCK * 40} ms blocks ({BLOCK} frames), "
              f"{LEFT} blocks left context:", "",
             "| batch | ms per block (min) | median | p95 | audio x real time at min (all streams) |",
             "|---|---|---|---|---|"]
    lines += [f"| {s['batch']} | {s['ms_per_block_min']} | {s['ms_per_block_median']} | {s['ms_per_block_p95']} | "
              f"{s['x_realtime_at_min'] * s['batch']:.1f} |" for s in streaming]
    lines += ["", "Offline `forward` on 10 s (RTF = compute time / audio time):", "",
              "| block | left | RTF (min of 5) | RTF (median) |", "|---|---|---|---|"]
    lines += [f"| {o['block_size'] or 'full'} | {o['left_blocks'] if o['left_blocks'] is not None else '-'} | "
              f"{o['rtf']} | {o['rtf_median']} |" for o in offline]
    lines += ["", f"Peak RSS (no_grad, block {BLOCK}, left {LEFT}), fresh process per row; `step` is fed 10 s chunks"
              f"{memory_note}:", "",
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
    p.add_argument("--skip-memory", action="store_true", help="CPU part without the (long) memory sweep")
    p.add_argument("--fast-step-only", action="store_true", help="only the fast-step table (encoder_cpu_step.md)")
    p.add_argument("--reps", type=int, default=6, help="interleaved repetitions in the fast-step table")
    p.add_argument("--gpu-batch", type=int, default=64)
    p.add_argument("--gpu-seconds", type=float, default=15.0)
    p.add_argument("--gpu-iters", type=int, default=10)
    p.add_argument("--memory-child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-mode", choices=["forward", "step"], default="forward", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.threads, args.memory_mode)
        return
    if args.fast_step_only:
        run_fast_step_only(args)
        return
    if not args.skip_cpu:
        run_cpu(args)
    if not args.skip_gpu and torch.cuda.is_available():
        run_gpu(args)


if __name__ == "__main__":
    main()
