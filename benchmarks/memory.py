"""Where the resident memory of `asr transcribe` and `asr serve` goes, step by step.

    python benchmarks/memory.py                 # models/default, the README sample
    python benchmarks/memory.py --model DIR --audio FILE

Each step runs in one fresh process (imports and allocations only grow), and the table gives the
resident set size (RSS, /proc/self/statm) after it and the growth it caused. After the torch import
it also splits the RSS by mapping (/proc/self/smaps): the CUDA libraries that the PyPI torch wheel
maps even on a machine without a GPU, torch's own CPU library, and anonymous memory (heap: Python
objects, tensors). Writes benchmarks/results/memory.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs in the child: prints one JSON object with the RSS after each step
_CHILD = r"""
import json, os, re, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def by_mapping():
    out, name = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                path = parts[5] if len(parts) > 5 else "[anon]"
                base = path.rsplit("/", 1)[-1]
                if base.startswith("[") and base != "[heap]":
                    base = "[anon]"
                name = ("CUDA libraries" if re.match(r"lib(cu|nv|torch_cuda|c10_cuda)", base) else
                        "libtorch_cpu" if base.startswith("libtorch_cpu") else
                        "anonymous + heap" if base in ("[anon]", "[heap]") else "other files")
            elif line.startswith("Rss:") and name:
                out[name] = out.get(name, 0.0) + int(line.split()[1]) / 1024
    return out
model, audio = sys.argv[1], sys.argv[2]
steps = [("python", rss())]
import numpy, soundfile; steps.append(("numpy + soundfile", rss()))
import torch; steps.append(("import torch", rss())); split = by_mapping()
torch.set_num_threads(1)
from streaming import Recognizer; steps.append(("import asr + streaming", rss()))
from asr.inference import InferenceConfig, load_inference
cfg = InferenceConfig(model=model)
loaded, _ = load_inference(cfg); steps.append(("load the model", rss()))
rec = Recognizer(loaded, cfg); steps.append(("one recognizer", rss()))
from asr.audio import stream_audio
for chunk in stream_audio(audio, chunk_seconds=1.0):
    rec.accept_waveform(chunk.numpy())
rec.finalize(); steps.append(("transcribe the file", rss()))
import server.app; steps.append(("import server", rss()))
recs = [Recognizer(loaded, cfg) for _ in range(16)]; steps.append(("16 more recognizers", rss()))
print(json.dumps({"steps": steps, "split": split, "cuda": torch.version.cuda}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models/default"))
    p.add_argument("--audio", default=str(ROOT / "samples/so3027_what_in_short.wav"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/memory"))
    args = p.parse_args()
    env_cmd = [sys.executable, "-c", _CHILD, args.model, args.audio]
    proc = subprocess.run(env_cmd, capture_output=True, text=True, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = ["# Resident memory, step by step", "",
             f"Model `{Path(args.model).name}`, audio `{Path(args.audio).name}`, torch CUDA build: {res['cuda']}.", "",
             "| step | RSS MB | + MB |", "|---|---:|---:|"]
    prev = 0.0
    for name, mb in res["steps"]:
        lines.append(f"| {name} | {mb:.0f} | {mb - prev:+.0f} |")
        prev = mb
    lines += ["", "RSS right after `import torch`, by mapping:", "", "| mapping | MB |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sorted(res["split"].items(), key=lambda kv: -kv[1])]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
