"""Int8 compression of models/default (asr export --compress): size, encoder speed and WER.

    python benchmarks/compress.py [--data MANIFEST.jsonl] [--max-utts N] [--skip-wer]

Variants: the shipped float16 file (run in float32), ``block-int8`` (one scale per 64 input columns
of each weight row, BCT) on fbgemm int8 kernels and on float32 kernels (exactly the stored
weights), ``block-int8`` with 256 columns, ``channel-int8`` and ``tensor-int8`` on int8 kernels.
Encoder: ms per 640 ms block of ``step`` (batch 1, block 16, left 4), 1 thread, the variants
interleaved in one process, after the WER decodes have finished (so they do not share the cores
with them); CPU = the thread's own CPU time (the host is shared). WER: ``asr decode --decoder ctc
--block-ms 640 --threads 1`` on ``--data`` (default: the speechocean762 dev-test that models/default
never trained on, egs/default/data/devtest/speechocean762_devtest.jsonl from egs/default/run.sh;
the Kaldi dir speechocean762/dev holds 41 speakers it trained on), all of it or its first
``--max-utts`` utterances (sorted by id), one subprocess per variant, all running at once, so
their RTF is measured under that load.

Writes benchmarks/results/compress.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from asr.config import load_yaml, save_yaml
from asr.models.compress import CompressionConfig
from asr.models.io import ModelDirConfig, compress_model_dir, default_model_dir, load_model_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "egs" / "default" / "data" / "devtest" / "speechocean762_devtest.jsonl"
VARIANTS = {  # name -> compression (None = the shipped model)
    "float (shipped fp16 file)": None,
    "block-int8 /64, int8 kernels": CompressionConfig("block-int8", 64, "int8"),
    "block-int8 /64, float kernels": CompressionConfig("block-int8", 64, "float"),
    "block-int8 /256, int8 kernels": CompressionConfig("block-int8", 256, "int8"),
    "channel-int8, int8 kernels": CompressionConfig("channel-int8", 64, "int8"),
    "tensor-int8, int8 kernels": CompressionConfig("tensor-int8", 64, "int8"),
}


def _make_dirs(tmp: Path) -> dict[str, Path]:
    dirs, made = {}, {}
    for name, comp in VARIANTS.items():
        if comp is None:
            dirs[name] = default_model_dir()
            continue
        key = (comp.method, comp.block)
        if key not in made:
            made[key] = compress_model_dir(default_model_dir(), tmp / f"{comp.method}-{comp.block}", comp)
        out = made[key]
        if comp.kernel != "int8":  # same weights, another kernel: a copy whose config says so
            out = tmp / f"{comp.method}-{comp.block}-{comp.kernel}"
            out.mkdir()
            for f in ("model.pt", "tokenizer.model"):
                (out / f).symlink_to(made[key] / f)
            cfg = load_yaml(ModelDirConfig, made[key] / "config.yaml")
            save_yaml(dataclasses.replace(cfg, compression=comp), out / "config.yaml")
        dirs[name] = out
    return dirs


def _encoder_times(dirs: dict[str, Path], reps: int = 6, seconds: float = 12.0) -> dict[str, dict]:
    torch.set_num_threads(1)
    encs = {name: load_model_dir(d).model.encoder for name, d in dirs.items()}
    x = torch.randn(1, int(seconds * 100), 80)
    times: dict[str, list] = {n: [] for n in encs}
    for rep in range(reps + 1):
        for name, enc in encs.items():
            with torch.inference_mode():
                state = enc.init_state(1, 16, 4)
                for i in range(0, x.shape[1] - 63, 64):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    _, state = enc.step(x[:, i : i + 64], state)
                    if rep and i >= 64 * 5:
                        times[name].append(((time.perf_counter() - w0) * 1000, (time.thread_time() - c0) * 1000))
    out = {}
    for name, t in times.items():
        wall, cpu = sorted(a for a, _ in t), sorted(b for _, b in t)
        out[name] = {"wall_ms_min": round(wall[0], 2), "wall_ms_median": round(wall[len(wall) // 2], 2),
                     "cpu_ms_min": round(cpu[0], 2), "cpu_ms_median": round(cpu[len(cpu) // 2], 2)}
        print(f"  encoder {name}: {out[name]}", flush=True)
    return out


def _start_wer(model_dir: Path, data: Path, max_utts: int | None, out: Path) -> subprocess.Popen:
    """``asr decode`` of one variant in a subprocess (all variants run at once; WER does not
    depend on speed, and the RTF column is then measured under their shared load)."""
    cmd = [sys.executable, "-m", "blockasr", "decode", "--model", str(model_dir), "--data", str(data),
           "--decoder", "ctc", "--block-ms", "640", "--threads", "1", "--out", str(out), "--quiet"]
    if max_utts is not None:
        cmd += ["--max-utts", str(max_utts)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wer(proc: subprocess.Popen, model_dir: Path) -> dict:
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"decode of {model_dir} failed:\n{stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="Kaldi data dir or JSONL manifest for the WER")
    p.add_argument("--max-utts", type=int, default=None, help="only the first N utterances (default: all)")
    p.add_argument("--skip-wer", action="store_true")
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    n_params = sum(p.numel() for p in load_model_dir(default_model_dir()).model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        dirs = _make_dirs(Path(tmp))
        procs = {} if args.skip_wer else {n: _start_wer(d, args.data, args.max_utts, Path(tmp) / "dec" / d.name)
                                          for n, d in dirs.items()}
        wers = {n: _wer(proc, dirs[n]) for n, proc in procs.items()}
        load_enc = os.getloadavg()[0]
        enc = _encoder_times(dirs)
        rows = []
        for name, d in dirs.items():
            row = {"variant": name, "model_pt_bytes": (d / "model.pt").stat().st_size, **enc[name]}
            if name in wers:
                row.update({k: wers[name].get(k) for k in ("wer", "rtf", "latency_ms_p50", "latency_ms_p90",
                                                           "utterances", "audio_seconds")})
            rows.append(row)
            print(f"  {row}", flush=True)
    base = rows[0]
    load1 = os.getloadavg()[0]
    result = {"params": n_params, "float32_bytes": 4 * n_params, "loadavg_1min": {"start": load0, "encoder": load_enc,
              "end": load1}, "data": str(args.data), "max_utts": args.max_utts, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compress.json").write_text(json.dumps(result, indent=2) + "\n")
    n_utts = base.get("utterances")
    subset = "all" if args.max_utts is None else f"the first {args.max_utts} (sorted by id)"
    lines = ["# Int8 compression of models/default without retraining (`asr export --compress`)", "",
             f"Conditions: a shared {os.cpu_count()}-core host with other jobs running; host load average (1 min) "
             f"{load0:.1f} at the start, {load_enc:.1f} when the encoder timing began, {load1:.1f} at the end. "
             "Timings are noisy; the ratios between variants within this one run are what count. "
             f"{n_params / 1e6:.1f}M parameters (float32: {4 * n_params / 1e6:.1f} MB). Encoder: ms per 640 ms block "
             "of `step` (batch 1, block 16, left 4 blocks, 12 s of random features, the first 5 blocks and a warm-up "
             "repetition left out), 1 thread, variants interleaved, after the decodes had finished; CPU = the "
             "thread's own CPU time, the steadier number on a shared host.",
             f"WER: `asr decode --decoder ctc --block-ms 640 --threads 1`, {subset} utterances of `{args.data.name}` "
             f"({n_utts if n_utts is not None else '-'} utterances, {base.get('audio_seconds', '-')} s); the six decodes "
             "ran at once, so RTF is measured under their shared load.", "",
             "| variant | model.pt MB | x smaller than fp32 | x smaller than the fp16 file | encoder CPU min ms "
             "| CPU median | wall min | speed-up (CPU min) | WER % | WER change (rel.) | RTF (decodes in parallel) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wer = r.get("wer")
        change = "-" if wer is None or base.get("wer") in (None, 0) else f"{(wer - base['wer']) / base['wer'] * 100:+.1f} %"
        lines.append(f"| {r['variant']} | {r['model_pt_bytes'] / 1e6:.1f} | {4 * n_params / r['model_pt_bytes']:.2f} | "
                     f"{base['model_pt_bytes'] / r['model_pt_bytes']:.2f} | "
                     f"{r['cpu_ms_min']} | {r['cpu_ms_median']} | {r['wall_ms_min']} | "
                     f"{base['cpu_ms_min'] / r['cpu_ms_min']:.2f}x | {wer if wer is not None else '-'} | {change} | "
                     f"{r.get('rtf', '-')} |")
    lines += ["", "int8 kernels: fbgemm's `quantized::linear_dynamic` (int8 weights with one scale per row, activations",
              "quantized per call) for every linear layer and, on patches, the subsampling's 256-channel Conv2d.",
              f"PyTorch has no CPU int8 matmul with per-block scales (this CPU: torch capability "
              f"{torch.backends.cpu.get_cpu_capability()}, quantized engine {torch.backends.quantized.engine}):",
              "`block-int8` weights are re-quantized per row for it, so only its float-kernel row computes with",
              "exactly the blockwise weights.", ""]
    (RESULTS / "compress.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
