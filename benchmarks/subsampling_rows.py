"""How many streams' blocks one Conv2d subsampling call should take on CPU.

    python benchmarks/subsampling_rows.py            # models/default, 1 and 2 threads

For input lengths of a 100 ms chunk (19 feature frames), a 640 ms block (67) and a 1280 ms block
(131), the median ms per stream of ``Conv2dSubsampling.compute`` over batches of 1 .. 64 rows, and
of ``compute_many`` over 64 streams with and without ``CPU_MAX_FRAMES``. A batch whose first
convolution's output leaves the cache costs more per row than small batches; ``CPU_MAX_FRAMES``
bounds the padded input frames per call. Writes benchmarks/results/subsampling_rows_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.encoder.subsampling import CPU_MAX_FRAMES  # noqa: E402
from asr.models.io import load_model_dir  # noqa: E402

LENGTHS = (19, 67, 131)
ROWS = (1, 4, 8, 16, 32, 64)


def _median_ms(fn, reps: int) -> float:
    with torch.inference_mode():
        for _ in range(2):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "subsampling_rows_cpu"))
    args = p.parse_args(argv)
    sub = load_model_dir(args.model).model.encoder.subsampling.eval()
    rows_out = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for t in LENGTHS:
            per_row = {}
            for b in ROWS:
                x = torch.randn(b, t, 80)
                per_row[b] = round(_median_ms(lambda: sub.compute(x), args.reps) / b, 3)
            xs = [torch.randn(t, 80) for _ in range(64)]
            many = {str(m): round(_median_ms(lambda: sub.compute_many(xs, max_frames=m), args.reps) / 64, 3)
                    for m in (None, CPU_MAX_FRAMES)}
            rows_out.append({"threads": threads, "frames": t, "ms_per_stream_by_rows": per_row,
                             "compute_many_64_ms_per_stream": many})
            print(threads, t, per_row, many, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"max_frames": CPU_MAX_FRAMES, "rows": rows_out}, indent=2) + "\n")
    lines = ["# Conv2d subsampling on CPU: ms per stream by batch rows (models/default)", "",
             f"`python benchmarks/subsampling_rows.py`; median of {args.reps} calls. Input frames per row: 19 = a 100 ms "
             "chunk with its overlap, 67 = a 640 ms block, 131 = 1280 ms. Last two columns: `compute_many` over 64 "
             f"streams, unbounded and with `max_frames={CPU_MAX_FRAMES}` (`CPU_MAX_FRAMES`, what `step_batch` uses on CPU).", "",
             "| threads | frames | " + " | ".join(f"{b} rows" for b in ROWS) + " | 64 streams, unbounded | 64 streams, bounded |",
             "|" + "---|" * (len(ROWS) + 4)]
    for r in rows_out:
        m = r["compute_many_64_ms_per_stream"]
        lines.append(f"| {r['threads']} | {r['frames']} | " + " | ".join(f"{r['ms_per_stream_by_rows'][b]}" for b in ROWS)
                     + f" | {m['None']} | {m[str(CPU_MAX_FRAMES)]} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
