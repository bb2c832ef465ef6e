"""One server pass over N streams on the CPU, two checkouts back to back: ``streaming.process_batch``
with 100 ms of audio per stream (what ``asr serve`` runs for clients that send 100 ms frames), and
the end of all N streams at once (``finalize_batch`` where the code has it, else ``finalize`` per
stream, as the server's scheduler did).

    python benchmarks/batch_front.py --before /tmp/base            # this checkout against /tmp/base
    python benchmarks/batch_front.py --code DIR --streams 8        # one checkout, rows as JSON lines

Setup: ``models/default`` (``--model``), SAR (``--decoder``), 640 ms blocks, ``--threads`` torch
threads; the N streams start at different offsets of ``samples/so3027_what_in_short.wav`` repeated
(different feature remainders, block phases, segments). Per setting: ``--passes`` timed passes
after 8 warm-up ones (mean s/pass; 6.4 passes per 640 ms block, so the mean includes the passes in
which blocks complete), then one timed end of all streams. Each checkout runs in its own process
(its own ``asr``/``streaming``), before and after alternating ``--repeats`` times; the tables give
the median. ``same text``: both checkouts gave every stream the same finals. Writes
benchmarks/results/batch_front_cpu.md and .json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1600  # 100 ms


def _measure(args) -> None:
    """Worker: import the checkout at ``args.code`` and print one JSON row per stream count."""
    sys.path.insert(0, str(Path(args.code).resolve()))
    import numpy as np
    import torch

    import streaming.recognizer as sr
    from asr.audio import load_audio
    from asr.inference import InferenceConfig, load_inference

    torch.set_num_threads(args.threads)
    cfg = InferenceConfig(model=args.model, decoder=args.decoder, block_ms=640, threads=args.threads)
    loaded, _ = load_inference(cfg)
    fox = load_audio(ROOT / "samples" / "so3027_what_in_short.wav").numpy()
    need = (args.passes + 8) * CHUNK + 40000
    wave = np.tile(fox, need // len(fox) + 2)
    batched_end = getattr(sr, "finalize_batch", None)
    for n in [int(x) for x in args.streams.split(",")]:
        recs = [sr.Recognizer(loaded, cfg) for _ in range(n)]
        starts = [(i * 2357) % 40000 for i in range(n)]
        finals: list[list[str]] = [[] for _ in range(n)]
        times = []
        for p in range(args.passes + 8):
            work = [(r, wave[s + p * CHUNK: s + (p + 1) * CHUNK]) for r, s in zip(recs, starts)]
            t0 = time.perf_counter()
            out = sr.process_batch(work)
            if p >= 8:
                times.append(time.perf_counter() - t0)
            for f, res in zip(finals, out):
                f += [r.text for r in res if r.is_final]
        t0 = time.perf_counter()
        ends = batched_end(recs) if batched_end is not None else [r.finalize() for r in recs]
        end_s = time.perf_counter() - t0
        for f, res in zip(finals, ends):
            f += [r.text for r in res if r.is_final]
        print(json.dumps({"streams": n, "pass_s": statistics.mean(times), "end_s": end_s,
                          "batched_end": batched_end is not None, "finals": finals}), flush=True)


def _run(code: str, args) -> dict[int, dict]:
    cmd = [sys.executable, __file__, "--code", code, "--streams", args.streams, "--passes", str(args.passes),
           "--threads", str(args.threads), "--model", args.model, "--decoder", args.decoder]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["streams"]: r for r in rows}


def _compare(args) -> int:
    runs: dict[str, list[dict[int, dict]]] = {"before": [], "after": []}
    for rep in range(args.repeats):
        for label, code in (("before", args.before), ("after", str(ROOT))):
            runs[label].append(_run(code, args))
            print(label, rep, {n: (round(r["pass_s"] * 1000, 1), round(r["end_s"] * 1000, 1))
                               for n, r in runs[label][-1].items()}, flush=True)
    rows = []
    for n in [int(x) for x in args.streams.split(",")]:
        row = {"streams": n}
        for label, reps in runs.items():
            row[f"{label}_pass_ms"] = [round(r[n]["pass_s"] * 1000, 2) for r in reps]
            row[f"{label}_end_ms"] = [round(r[n]["end_s"] * 1000, 1) for r in reps]
        row["same_text"] = all(r[n]["finals"] == runs["before"][0][n]["finals"] for reps in runs.values() for r in reps)
        rows.append(row)
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "decoder": args.decoder, "threads": args.threads, "passes": args.passes,
            "repeats": args.repeats, "before": args.before, "chunk_ms": 100}
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    med = statistics.median
    lines = [f"| streams | s/pass before (ms) | after (ms) | speed-up | end of all N before (ms) | after (ms) | speed-up "
             f"| same text |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pb, pa, eb, ea = (med(r[k]) for k in ("before_pass_ms", "after_pass_ms", "before_end_ms", "after_end_ms"))
        lines.append(f"| {r['streams']} | {pb:.1f} | {pa:.1f} | {pb / pa:.2f} | {eb:.0f} | {ea:.0f} | {eb / ea:.2f} "
                     f"| {r['same_text']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["same_text"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="the checkout to compare this one against (its asr/ and streaming/)")
    p.add_argument("--code", help="worker mode: measure the checkout in this directory")
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--decoder", default="sar")
    p.add_argument("--streams", default="8,16,32")
    p.add_argument("--passes", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch_front_cpu"))
    args = p.parse_args(argv)
    if args.code:
        _measure(args)
        return 0
    if not args.before:
        p.error("give --before DIR (or --code DIR for one checkout)")
    return _compare(args)


if __name__ == "__main__":
    sys.exit(main())
