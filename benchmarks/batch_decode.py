"""One server pass over N streams: ``streaming.process_batch`` with per-stream block decoders against
batched ones (one CTC log-prob call per round, one SAR fusion call over every stream's window).

    python benchmarks/batch_decode.py                           # CPU, 2 threads, N = 1, 4, 16
    python benchmarks/batch_decode.py --device cuda --streams 1,16,64,256

Setup: ``models/default`` (or ``--model``), 640 ms blocks, every pass gives each of the N streams
640 ms of audio (the streams start with different offsets, so their segments, LM contexts and
tentative tails differ). The audio is ``samples/so3027_what_in_short.wav`` (a real speechocean762 voice) repeated. Reported: mean seconds per
pass (after ``--warmup`` untimed passes, 6 by default: until session 14 there was one, so the
timed passes were a stream's first blocks, before its caches reach their bound), and the real-time factor of one pass (pass time / 0.64 s): N streams
run in real time while it is below 1. Both modes give the same text (checked here, and by
tests/test_batch_decode.py). Writes benchmarks/results/batch_decode_<device>.md and .json. As in
``asr serve``, the objects alive once the model is loaded leave the collector's full collections
(``freeze_loaded_objects``; before session 15 the passes here paid for those collections, the server's did not).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from asr.audio import load_audio  # noqa: E402
from asr.inference import InferenceConfig, load_inference  # noqa: E402
from server.scheduler import freeze_loaded_objects  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from streaming import Recognizer, process_batch  # noqa: E402

CHUNK_S = 0.64


class _OpCounter(TorchDispatchMode):
    """Counts the tensor operations that do work (views left out): on a GPU each is a kernel launch
    or a copy, the cost that dominates small per-stream steps."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def _run(loaded, cfg, wave: np.ndarray, n: int, passes: int, batched: bool, warmup: int = 1,
         profile: Path | None = None, counter: _OpCounter | None = None) -> tuple[float, list[str]]:
    chunk = int(CHUNK_S * 16000)
    profiler = cProfile.Profile() if profile else None
    recs = [Recognizer(loaded, cfg) for _ in range(n)]
    starts = [(i * 2357) % (len(wave) - chunk * (passes + warmup)) for i in range(n)]  # different states
    texts = [[] for _ in range(n)]
    times = []
    for p in range(passes + warmup):
        work = [(r, wave[s + p * chunk: s + (p + 1) * chunk]) for r, s in zip(recs, starts)]
        t0 = time.perf_counter()
        timed = p >= warmup
        if profiler and timed:
            profiler.enable()
        if counter is not None and timed:
            with counter:
                out = process_batch(work, batch_decoders=batched)
        else:
            out = process_batch(work, batch_decoders=batched)
        if loaded.model.ctc.weight.is_cuda:
            torch.cuda.synchronize()
        if profiler and timed:
            profiler.disable()
        if timed:
            times.append(time.perf_counter() - t0)
        for i, res in enumerate(out):
            texts[i] += [r.text for r in res if r.is_final]
    for i, r in enumerate(recs):
        texts[i] += [x.text for x in r.finalize() if x.is_final]
    if profiler:
        _write_profile(profiler, profile, f"{cfg.decoder}, {n} streams, {passes} batched passes")
    return float(np.mean(times)), [" ".join(t) for t in texts]


def _write_profile(profiler: cProfile.Profile, path: Path, title: str) -> None:
    """The passes' hottest functions, by own time and by cumulative time (where a pass waits)."""
    buf = io.StringIO()
    for key in ("tottime", "cumulative"):
        buf.write(f"## {title}: top 30 by {key}\n")
        pstats.Stats(profiler, stream=buf).sort_stats(key).print_stats(30)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(buf.getvalue())
    print(f"profile: {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--decoders", "--decoder", default="ctc,sar,bsbs", help="comma-separated: ctc, sar, bsbs")
    p.add_argument("--streams", default="1,4,16")
    p.add_argument("--passes", type=int, default=8, help="timed passes per setting (after the warm-up)")
    p.add_argument("--warmup", type=int, default=6,
                   help="untimed passes first: with 4 blocks of left context a stream's caches reach their "
                        "bound (steady state, as most of a server's streams) at its 5th block")
    p.add_argument("--no-per-stream", action="store_true",
                   help="time the batched decoders only (no per-stream run, no text comparison)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", default=None,
                   help="also write cProfile tables of the batched passes (appended, one per setting) to this file")
    p.add_argument("--count-ops", action="store_true",
                   help="also count the tensor operations per pass of each mode (views left out; on a GPU each "
                        "is a kernel launch), in separate untimed runs")
    p.add_argument("--out", default=None, help="results stem (default benchmarks/results/batch_decode_<device>)")
    args = p.parse_args(argv)

    base = InferenceConfig(model=args.model, block_ms=640, device=args.device, threads=args.threads)
    loaded, _ = load_inference(base)
    freeze_loaded_objects()  # as asr serve does: the collector's full collections skip the model
    fox = load_audio(ROOT / "samples" / "so3027_what_in_short.wav").numpy()
    wave = np.tile(fox, int(np.ceil((args.passes + args.warmup + 12) * CHUNK_S * 16000 / len(fox))) + 1)
    rows = []
    for decoder in args.decoders.split(","):
        cfg = InferenceConfig(model=args.model, decoder=decoder, block_ms=640, device=args.device)
        for n in [int(x) for x in args.streams.split(",")]:
            batched, got = _run(loaded, cfg, wave, n, args.passes, True, args.warmup)
            if args.no_per_stream:
                per_stream, want = float("nan"), None
            else:
                per_stream, want = _run(loaded, cfg, wave, n, args.passes, False, args.warmup)
            if args.profile:  # a separate run: the profiler's overhead stays out of the timings
                _run(loaded, cfg, wave, n, args.passes, True, args.warmup, Path(args.profile))
            row = {"decoder": decoder, "streams": n, "per_stream_s": round(per_stream, 4), "batched_s": round(batched, 4),
                   "per_stream_rtf": round(per_stream / CHUNK_S, 3), "batched_rtf": round(batched / CHUNK_S, 3),
                   "speedup": round(per_stream / batched, 2), "same_text": None if want is None else got == want}
            if args.count_ops:
                for mode, flag in (("per_stream_ops", False), ("batched_ops", True)):
                    counter = _OpCounter()
                    _run(loaded, cfg, wave, n, args.passes, flag, args.warmup, counter=counter)
                    row[mode] = round(counter.ops / args.passes)
            rows.append(row)
            print(json.dumps(row), flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({args.threads} threads)"
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"batch_decode_{args.device.split(':')[0]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    lines = [f"# One process_batch pass, per-stream vs batched block decoders ({device})", "",
             f"640 ms blocks, each pass gives every stream 640 ms of audio; mean of {args.passes} passes after "
             f"{args.warmup} untimed ones. "
             "RTF = pass time / 0.64 s (below 1: the N streams keep up).", "",
             "| decoder | streams | per-stream decoders s/pass (RTF) | batched s/pass (RTF) | speed-up | same text |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['decoder']} | {r['streams']} | {r['per_stream_s']} ({r['per_stream_rtf']}) | "
              f"{r['batched_s']} ({r['batched_rtf']}) | {r['speedup']} | {r['same_text']} |" for r in rows]
    if args.count_ops:
        lines += ["", "Tensor operations per pass (views left out; on a GPU each is a kernel launch or a copy):", "",
                  "| decoder | streams | per-stream decoders | batched |", "|---|---|---|---|"]
        lines += [f"| {r['decoder']} | {r['streams']} | {r['per_stream_ops']} | {r['batched_ops']} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["same_text"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
