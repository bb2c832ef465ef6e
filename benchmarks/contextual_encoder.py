"""Contextual block conformer vs the plain block encoder: streaming step cost, offline RTF, training step.

    python benchmarks/contextual_encoder.py                     # CPU, 1 thread: presets small and default
    python benchmarks/contextual_encoder.py --presets --models DIR1 DIR2 --tag trained   # model dirs only
    python benchmarks/contextual_encoder.py --device cuda       # the same on a GPU (results/..._cuda.*)

Both kinds of each preset share their weights (the contextual encoder has the plain one's
parameters, same names, and loads its state dict), so the difference is the context embedding's
arithmetic alone: one more token per block through the pointwise modules and the attention.

* ``step``: ms per 640 ms block of streaming (batch 1, block 16, left 4 blocks), 20 s of random
  features fed 640 ms at a time, the two kinds interleaved for ``--reps`` rounds; wall time and
  (CPU) the thread's own CPU time, which excludes waiting for a core on a shared host.
* ``offline``: real-time factor of ``forward`` over 10 s (block 16 / left 4, and full context).
* ``train``: forward + backward of a batch of 4 x 10 s at block 16 / left 4 (ms per batch).
  Offline and train: min over interleaved rounds, wall and thread CPU time (on CUDA the CPU
  column is the host thread's and means little).

Writes benchmarks/results/contextual_encoder_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.encoder import EncoderConfig, build_encoder  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FEAT_PER_S = 100
BLOCK, LEFT = 16, 4  # 640 ms blocks, 2.56 s of left context
PRESETS = {
    "small": EncoderConfig.small(),
    # egs/default/conf/sar.yaml and contextual.yaml sizes (models/default)
    "default": dataclasses.replace(EncoderConfig.small(), n_layers=9, ff_mult=3),
}


def _pair(cfg: EncoderConfig, device: str) -> dict:
    torch.manual_seed(0)
    plain = build_encoder(dataclasses.replace(cfg, kind="conformer")).to(device).eval()
    ctx = build_encoder(dataclasses.replace(cfg, kind="contextual_block")).to(device).eval()
    ctx.load_state_dict(plain.state_dict())
    return {"conformer": plain, "contextual_block": ctx}


def _from_dirs(dirs: list[str], device: str) -> dict:
    from asr.models.io import load_model_dir

    out = {}
    for d in dirs:
        enc = load_model_dir(d, device).model.encoder.eval()
        out[f"{d} ({enc.cfg.kind})"] = enc
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stream_once(enc, x: torch.Tensor, device: str) -> list[tuple[float, float]]:
    """(wall ms, thread CPU ms) per emitted block of one stream fed 640 ms per step."""
    chunk = BLOCK * 4
    state = enc.init_state(1, BLOCK, LEFT, device)
    rows = []
    for i in range(0, x.shape[1], chunk):
        _sync(device)
        w0, c0 = time.perf_counter(), time.thread_time()
        y, state = enc.step(x[:, i:i + chunk], state)
        _sync(device)
        w1, c1 = time.perf_counter(), time.thread_time()
        if y.shape[1]:
            n = y.shape[1] // BLOCK
            rows.append(((w1 - w0) * 1000 / n, (c1 - c0) * 1000 / n))
    return rows


def bench_step(encoders: dict, reps: int, device: str) -> dict:
    x = torch.randn(1, 20 * FEAT_PER_S, 80, device=device)
    times = {name: [] for name in encoders}
    with torch.inference_mode():
        for name, enc in encoders.items():
            _stream_once(enc, x[:, :8 * FEAT_PER_S], device)  # warm-up
        for _ in range(reps):
            for name, enc in encoders.items():
                times[name] += _stream_once(enc, x, device)
    out = {}
    for name, rows in times.items():
        wall, cpu = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
        out[name] = {"steps": len(rows), "wall_min": round(wall[0], 2), "wall_median": round(wall[len(wall) // 2], 2),
                     "cpu_min": round(cpu[0], 2), "cpu_median": round(cpu[len(cpu) // 2], 2)}
    return out


def _timed(fn, device: str) -> tuple[float, float]:
    """(wall s, thread CPU s) of ``fn()``."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    _sync(device)
    return time.perf_counter() - w0, time.thread_time() - c0


def bench_offline(encoders: dict, device: str, seconds: float = 10.0, reps: int = 5) -> dict:
    """RTF of ``forward`` (min over ``reps`` interleaved rounds): wall, and CPU (thread time)."""
    x = torch.randn(1, int(seconds * FEAT_PER_S), 80, device=device)
    lens = torch.tensor([x.shape[1]], device=device)
    out = {name: {} for name in encoders}
    with torch.inference_mode():
        for bs, left, key in ((BLOCK, LEFT, "640ms"), (None, None, "full")):
            best = {name: [float("inf"), float("inf")] for name in encoders}
            for r in range(reps + 1):
                for name, enc in encoders.items():
                    wall, cpu = _timed(lambda: enc(x, lens, bs, left), device)
                    if r:  # the first round warms up
                        best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
            for name in encoders:
                out[name][f"rtf_{key}"] = round(best[name][0] / seconds, 4)
                out[name][f"rtf_{key}_cpu"] = round(best[name][1] / seconds, 4)
    return out


def bench_train(encoders: dict, device: str, reps: int = 3) -> dict:
    """Forward + backward of 4 x 10 s at block 16 / left 4: ms (min over rounds), wall and CPU."""
    x = torch.randn(4, 10 * FEAT_PER_S, 80, device=device)
    lens = torch.tensor([1000, 900, 800, 700], device=device)
    best = {name: [float("inf"), float("inf")] for name in encoders}

    def run(enc):
        y, _ = enc(x, lens, BLOCK, LEFT)
        y.square().mean().backward()

    for r in range(reps + 1):
        for name, enc in encoders.items():
            enc.train()
            wall, cpu = _timed(lambda: run(enc), device)
            if r:
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
            enc.zero_grad(set_to_none=True)
            enc.eval()
    return {name: {"train_ms": round(b[0] * 1000, 1), "train_ms_cpu": round(b[1] * 1000, 1)}
            for name, b in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=4, help="interleaved streaming rounds (20 s each)")
    p.add_argument("--presets", nargs="*", default=["small", "default"], choices=sorted(PRESETS))
    p.add_argument("--models", nargs="*", default=[], help="model directories to time as well")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--tag", default="", help="results/contextual_encoder_<device>_<tag>.* (keeps the default files)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    groups = {name: _pair(PRESETS[name], args.device) for name in args.presets}
    if args.models:
        groups["model dirs"] = _from_dirs(args.models, args.device)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for group, encoders in groups.items():
        step = bench_step(encoders, args.reps, args.device)
        offline = bench_offline(encoders, args.device)
        train = {} if args.skip_train or group == "model dirs" else bench_train(encoders, args.device)
        for name in encoders:
            row = {"group": group, "encoder": name, **step[name], **offline[name], **train.get(name, {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = []
    result = {"device": args.device, "threads": args.threads, "started": started, "loadavg_end": load,
              "block": BLOCK, "left_blocks": LEFT, "reps": args.reps, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    stem = RESULTS / f"contextual_encoder_{device}{'_' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(result))
    print(f"wrote {stem}.md/.json")


def _markdown(r: dict) -> str:
    lines = [f"# Contextual block vs plain block encoder ({r['device']}, {r['threads']} thread(s))", "",
             f"`python benchmarks/contextual_encoder.py` ({r['started']}; load average at the end "
             f"{' '.join(r['loadavg_end'])}). Random weights shared by both kinds of a preset; `default` = the "
             "egs/default/conf/sar.yaml sizes (9 layers, ff x3), `small` = EncoderConfig.small(). Step: ms per "
             f"640 ms block, batch 1, block {r['block']}, left {r['left_blocks']}, {r['reps']} interleaved "
             "rounds of 20 s; CPU = the thread's own CPU time (the host is shared). RTF: `forward` over 10 s. "
             "Train: forward + backward, 4 x 10 s, block 16 / left 4.", "",
             "| preset | encoder | step wall min | step wall median | step CPU min | step CPU median | "
             "RTF 640 ms (wall / CPU) | RTF full (wall / CPU) | train ms (wall / CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        train = f"{x['train_ms']} / {x['train_ms_cpu']}" if "train_ms" in x else ""
        lines.append(f"| {x['group']} | {x['encoder']} | {x['wall_min']} | {x['wall_median']} | {x['cpu_min']} | "
                     f"{x['cpu_median']} | {x['rtf_640ms']} / {x['rtf_640ms_cpu']} | {x['rtf_full']} / "
                     f"{x['rtf_full_cpu']} | {train} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
