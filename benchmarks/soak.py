"""Soak: resident memory of one long streaming session and of one long `asr transcribe`.

    python benchmarks/soak.py                       # 60 min of audio, both parts
    python benchmarks/soak.py --minutes 10 --part session
    python benchmarks/soak.py --malloc-trim         # session: malloc_trim(0) after every RSS sample

Audio: samples/*.wav looped to ``--minutes`` minutes. Decoder ``--decoder`` (default ctc, the
cheapest; models/default, default block and left context).

session: one :class:`streaming.recognizer.Recognizer` in this process, fed 0.5 s chunks as fast as
it computes (the pace limit is 10x real time and a single CPU core runs well below it); every
``--every-s`` seconds of audio it records the process RSS (/proc/self/status VmRSS) and the bytes
held by the recognizer's state (every tensor and list reachable from its encoder state, decoder,
endpointer and feature buffer): flat state with rising RSS means the allocator, rising state a leak.

transcribe: ``asr transcribe`` of the looped file written to a temp dir, in a child process whose
VmRSS is read every ``--every-s`` seconds of wall time.

Writes benchmarks/results/soak.md, soak.json and soak.png (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from proc_mem import vm_rss_mb  # noqa: E402  (soak_server imports it from here too)


def looped_audio(minutes: float, sample_rate: int = 16000):
    """samples/*.wav concatenated and repeated to ``minutes`` minutes (float32 numpy)."""
    import numpy as np
    from asr.audio import load_audio
    clips = [load_audio(p).numpy() for p in sorted((ROOT / "samples").glob("*.wav"))]
    one = np.concatenate(clips)
    n = int(minutes * 60 * sample_rate)
    return np.tile(one, n // one.size + 1)[:n].astype(np.float32)


def run_session(args) -> list[dict]:
    import torch
    from asr.inference import InferenceConfig
    from asr.models.io import load_model_dir
    from streaming.recognizer import Recognizer
    from streaming.state_size import state_bytes
    torch.set_num_threads(1)
    trim = None
    if args.malloc_trim:
        import ctypes
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    loaded = load_model_dir(args.model)
    rec = Recognizer(loaded, InferenceConfig(decoder=args.decoder))
    wave = looped_audio(args.minutes)
    sr, chunk = 16000, 8000
    every = int(args.every_s * sr)
    rows, t0, finals = [], time.perf_counter(), 0
    for s in range(0, wave.size, chunk):
        finals += sum(r.is_final for r in rec.accept_waveform(wave[s:s + chunk]))
        done = s + chunk
        if done % every == 0:
            if trim is not None:
                trim(0)
            rows.append({"audio_min": done / sr / 60, "wall_s": round(time.perf_counter() - t0, 1),
                         "rss_mb": round(vm_rss_mb(), 1), "state_kib": round(state_bytes(rec) / 1024, 1),
                         "finals": finals})
            print(f"session {rows[-1]}", flush=True)
    return rows


def run_transcribe(args) -> list[dict]:
    import soundfile as sf
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soak.wav"
        sf.write(path, looped_audio(args.minutes), 16000)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "blockasr.cli", "transcribe", str(path), "--quiet",
               "--decoder", args.decoder, "--model", str(args.model), "--threads", "1"]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        while child.poll() is None:
            time.sleep(args.every_s)
            rss = vm_rss_mb(child.pid)
            if rss is not None and child.poll() is None:
                rows.append({"wall_s": round(time.perf_counter() - t0, 1), "rss_mb": round(rss, 1)})
                print(f"transcribe {rows[-1]}", flush=True)
        if child.returncode:
            raise SystemExit(f"asr transcribe failed ({child.returncode})")
        rows.append({"wall_s": round(time.perf_counter() - t0, 1), "rss_mb": None, "exit": True})
    return rows


def growth(rows: list[dict], key: str, first: float, x: str) -> dict:
    """RSS at the first row at or past ``first`` (x units), and at the last, and the difference."""
    pts = [r for r in rows if r.get(key) is not None]
    if not pts:
        return {}
    a = next((r for r in pts if r[x] >= first), pts[0])
    b = pts[-1]
    return {"from": a[x], "to": b[x], "rss_from": a[key], "rss_to": b[key], "growth_mb": round(b[key] - a[key], 1)}


def plot(result: dict, out: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    s = result.get("session", [])
    if s:
        axes[0].plot([r["audio_min"] for r in s], [r["rss_mb"] for r in s], label="RSS")
        axes[0].set_xlabel("audio minutes")
        axes[0].set_ylabel("MiB")
        axes[0].set_title(f"session ({result['decoder']})")
    t = [r for r in result.get("transcribe", []) if r.get("rss_mb") is not None]
    if t:
        axes[1].plot([r["wall_s"] / 60 for r in t], [r["rss_mb"] for r in t])
        axes[1].set_xlabel("wall minutes")
        axes[1].set_title("asr transcribe")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument("--decoder", default="ctc")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--every-s", type=float, default=30.0)
    p.add_argument("--part", choices=["session", "transcribe", "both"], default="both")
    p.add_argument("--malloc-trim", action="store_true")
    p.add_argument("--tag", default="soak")
    args = p.parse_args()
    result: dict = {"decoder": args.decoder, "minutes": args.minutes, "malloc_trim": args.malloc_trim,
                    "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX")}
    if args.part in ("session", "both"):
        result["session"] = run_session(args)
        result["session_growth"] = growth(result["session"], "rss_mb", 1.0, "audio_min")
        result["state_growth"] = growth(result["session"], "state_kib", 1.0, "audio_min")
    if args.part in ("transcribe", "both"):
        result["transcribe"] = run_transcribe(args)
        result["transcribe_growth"] = growth(result["transcribe"], "rss_mb", 60.0, "wall_s")
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Soak ({args.minutes:g} min of looped samples/*.wav, decoder {args.decoder}, "
             f"malloc_trim {args.malloc_trim}, MALLOC_ARENA_MAX {result['MALLOC_ARENA_MAX']})", "",
             "| measure | from | to | value from | value to | growth |", "|---|---|---|---|---|---|"]
    for name, key, unit in [("session RSS (MiB)", "session_growth", "audio min"),
                            ("session state (KiB)", "state_growth", "audio min"),
                            ("transcribe RSS (MiB)", "transcribe_growth", "wall s")]:
        g = result.get(key)
        if g:
            lines.append(f"| {name} | {g['from']:g} {unit} | {g['to']:g} {unit} | {g['rss_from']} | "
                         f"{g['rss_to']} | {g['growth_mb']} |")
    text = "\n".join(lines) + "\n"
    (out / f"{args.tag}.md").write_text(text)
    print(text)
    if not plot(result, out / f"{args.tag}.png"):
        print("matplotlib missing: no plot")


if __name__ == "__main__":
    main()
