"""Start-up time of the ``asr`` command line: ``asr --help``, every ``asr CMD --help``, and
``asr transcribe`` of the shipped sample end to end (model load + decoding).

    python benchmarks/cli_start.py [--repeats 5] [--e2e-repeats 3] [--baseline OLD.json] [--note TEXT]

Each command runs as a fresh ``python -m blockasr`` process from the repository root (the way a
user starts it); the table gives the minimum and the median wall time over the repeats (the minimum
is the least disturbed by other jobs on a shared machine) and whether the process imported torch.
``--baseline`` adds the minimum of an earlier run's JSON as a "before" column.
Prints the table and writes benchmarks/results/cli_start.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = "samples/so3027_what_in_short.wav"

HELP_COMMANDS = [[], ["prepare"], ["tokenizer"], ["cmvn"], ["train"], ["train-lm"], ["average"], ["export"],
                 ["transcribe"], ["decode"], ["serve"], ["stream"]]

# Run inside the measured process after the command: did it import torch? (written to $_PROBE_FD)
_PROBE = ("import atexit, os, sys\n"
          "atexit.register(lambda: os.write(int(os.environ['_PROBE_FD']), str('torch' in sys.modules).encode()))\n"
          "sys.argv = ['asr'] + sys.argv[1:]\n"
          "import runpy; runpy.run_module('blockasr', run_name='__main__')\n")


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _time(argv: list[str]) -> tuple[float, float, bool, int]:
    """Wall and CPU seconds of ``python -m blockasr ARGV``, whether torch was imported, exit status."""
    read, write = os.pipe()
    cpu0 = _cpu_children()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, pass_fds=(write,),
                          env={**os.environ, "_PROBE_FD": str(write)})
    wall = time.perf_counter() - t0
    cpu = _cpu_children() - cpu0
    os.close(write)
    with os.fdopen(read) as f:
        torch_loaded = f.read() == "True"
    return wall, cpu, torch_loaded, proc.returncode


def _row(name: str, argv: list[str], repeats: int) -> dict:
    runs = [_time(argv) for _ in range(repeats)]
    walls = [r[0] for r in runs]
    return {"command": name, "min_s": round(min(walls), 3), "median_s": round(statistics.median(walls), 3),
            "cpu_min_s": round(min(r[1] for r in runs), 3), "repeats": repeats, "torch": runs[-1][2],
            "exit": runs[-1][3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs of each --help command (default 5)")
    p.add_argument("--e2e-repeats", type=int, default=3, help="runs of asr transcribe SAMPLE (default 3; 0 = skip)")
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2],
                   help="end-to-end rows with these --threads (default 1 2; set_num_threads overrides OMP_NUM_THREADS)")
    p.add_argument("--baseline", default=None, help="an earlier run's cli_start.json: its minima as a 'before' column")
    p.add_argument("--note", default="", help="a line printed above the table (commit, machine state)")
    p.add_argument("--out", default=str(RESULTS / "cli_start"), help="output prefix (.md and .json)")
    args = p.parse_args()

    load_start = os.getloadavg()[0]
    rows = []
    for argv in HELP_COMMANDS:
        name = "asr " + " ".join(argv + ["--help"])
        rows.append(_row(name, argv + ["--help"], args.repeats))
        print(rows[-1], flush=True)
    if args.e2e_repeats:
        argv = ["transcribe", SAMPLE, "--format", "json", "--quiet"]
        rows.append(_row("asr transcribe SAMPLE --format json (end to end)", argv, args.e2e_repeats))
        print(rows[-1], flush=True)
        for threads in args.threads:  # the --threads default: CPU burned for the same output
            rows.append(_row(f"asr transcribe SAMPLE --threads {threads}", argv + ["--threads", str(threads)],
                             args.e2e_repeats))
            print(rows[-1], flush=True)
    load_end = os.getloadavg()[0]

    before = {}
    if args.baseline:
        before = {r["command"]: r["min_s"] for r in json.loads(Path(args.baseline).read_text())["rows"]}
    cols = ["command", *(["before: wall min (s)"] if before else []), "wall min (s)", "wall median (s)",
            "CPU min (s)", "torch imported", "exit"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        old = [f"{before[r['command']]:.3f}" if r["command"] in before else "-"] if before else []
        lines.append("| " + " | ".join([f"`{r['command']}`", *old, f"{r['min_s']:.3f}", f"{r['median_s']:.3f}",
                                        f"{r['cpu_min_s']:.3f}", "yes" if r["torch"] else "no", str(r["exit"])]) + " |")
    table = "\n".join(lines)
    cpus = len(os.sched_getaffinity(0))
    meta = (f"{cpus} CPUs, load average (1 min) {load_start:.2f} at the start, {load_end:.2f} at the end; "
            f"{args.repeats} runs per --help command, {args.e2e_repeats} end to end; "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; python {sys.version.split()[0]}.")
    md = "# `asr` start-up time (fresh process per run)\n\n"
    if args.note:
        md += args.note + "\n\n"
    md += meta + "\n\n" + table + "\n\nRe-run: `python benchmarks/cli_start.py`.\n"
    print("\n" + meta + "\n\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "note": args.note, "rows": rows,
                                                    "baseline": before}, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
