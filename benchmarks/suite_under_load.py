"""The test suite, run several times in a row while busy processes load the machine (issue 19).

Each run is ``python -m pytest -q`` (or the given pytest arguments) in a fresh process; meanwhile
``--busy`` processes spin on the CPU (pure Python loops, so they hold a core each). The load
average, every run's wall time and its pytest summary line go into a table.

    python benchmarks/suite_under_load.py --runs 3 --busy 4
    python benchmarks/suite_under_load.py --runs 1 --busy 4 -- tests/test_recognizer.py -q
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin() -> None:
    while True:
        pass


def _summary(output: str) -> str:
    """pytest's last line ("761 passed, 1 skipped in 780.1s"), without its '=' padding."""
    lines = [line.strip("= ").strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="suite runs in a row")
    p.add_argument("--busy", type=int, default=4, help="busy-loop processes beside the suite")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite_under_load"),
                   help="output stem (.md and .json)")
    p.add_argument("pytest_args", nargs="*", default=["-q"], help="arguments for pytest (after --)")
    args = p.parse_args()
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    rows = []
    try:
        for i in range(args.runs):
            start = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args.pytest_args],
                                  cwd=ROOT, capture_output=True, text=True)
            rows.append({"run": i + 1, "returncode": proc.returncode, "wall_s": round(time.monotonic() - start, 1),
                         "load_1min": round(os.getloadavg()[0], 2), "summary": _summary(proc.stdout)})
            print(f"run {i + 1}: rc {proc.returncode}, {rows[-1]['wall_s']} s, load {rows[-1]['load_1min']}: "
                  f"{rows[-1]['summary']}", flush=True)
            if proc.returncode:
                print(proc.stdout[-4000:], file=sys.stderr)
    finally:
        for s in spinners:
            s.terminate()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "busy": args.busy, "pytest_args": args.pytest_args,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out.with_suffix(".json").write_text(json.dumps({**meta, "runs": rows}, indent=2) + "\n")
    table = ["| run | exit | wall | load (1 min) | pytest |", "|---|---|---|---|---|"]
    table += [f"| {r['run']} | {r['returncode']} | {r['wall_s'] / 60:.1f} min | {r['load_1min']} | {r['summary']} |"
              for r in rows]
    out.with_suffix(".md").write_text(
        f"# The suite {args.runs} times in a row beside {args.busy} busy processes\n\n"
        f"`python benchmarks/suite_under_load.py --runs {args.runs} --busy {args.busy}` on {meta['cpus']} CPUs, "
        f"{meta['date']}; pytest {' '.join(args.pytest_args)}.\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
