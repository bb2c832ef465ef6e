"""BSBS final latency: where the time from the end of the audio to the final result goes, before
and after a change, on the same utterances.

    python benchmarks/bsbs_latency.py [--before HEAD] [--after-files asr/search/bsbs.py ...]
        [--data egs/default/data/devtest/librispeech_dev.jsonl] [--every 4] [--variant NAME=JSON]

Each code tree runs in its own worker process (``--jobs`` at a time, 1 thread each), decoding the
selected utterances the way ``asr decode`` does (the recognizer, 100 ms chunks, the model's own LM
by default): final latency = wall time from before the last chunk to the final result. Trees:

- ``before``: ``git archive`` of ``--before``;
- ``after``: the working tree, or with ``--after-files`` the ``--before`` tree with only those
  files taken from the working tree (other people's uncommitted edits stay out);
- ``--variant NAME=JSON``: the after tree with :class:`~asr.search.BsbsConfig` fields replaced
  (e.g. ``'{"trigger_slack": 2}'``; ``"end_of_stream": false`` turns the recognizer's
  ``end_of_stream`` call into a no-op), to map the latency / WER trade-off.

Within the latency window each worker times, by wrapping methods: the encoder
(``Recognizer.step_encoder``), the block searches (``BlockwiseBeamSearch.extend_block``: the last
chunk's blocks and the flush's), the final search (``BlockwiseBeamSearch.finalize``) and the rest
(features, CTC head, forced alignment, detokenization); and it counts the beam expansions.

Writes ``--out`` (.md, .json; default benchmarks/results/bsbs_latency) with every hypothesis.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("encoder", "block_search", "final_search", "other")


def _timed(cls, name: str, part: str, times: dict) -> None:
    """Wrap ``cls.name`` so that its wall time adds to ``times[part]`` while ``times["on"]``."""
    fn = getattr(cls, name)

    def wrapper(*args, **kwargs):
        if not times.get("on"):
            return fn(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[part] = times.get(part, 0.0) + time.perf_counter() - t0

    setattr(cls, name, wrapper)


def worker(args: argparse.Namespace) -> None:
    """Decode every selected utterance; one JSON line per utterance on stdout."""
    import dataclasses

    import torch

    from asr.audio import load_audio
    from asr.data import read_manifest
    from asr.inference import InferenceConfig, load_inference
    from asr.search import BeamSearch, BlockwiseBeamSearch
    from streaming import Recognizer

    torch.set_num_threads(1)
    overrides = json.loads(args.overrides)
    if overrides.pop("end_of_stream", True) is False:
        BlockwiseBeamSearch.end_of_stream = lambda self: None
    if overrides:
        init = BlockwiseBeamSearch.__init__

        def patched(self, scorers, weights, config):
            init(self, scorers, weights, dataclasses.replace(config, **overrides))

        BlockwiseBeamSearch.__init__ = patched
    times: dict = {}
    _timed(Recognizer, "step_encoder", "encoder", times)
    _timed(BlockwiseBeamSearch, "extend_block", "block_search", times)
    _timed(BlockwiseBeamSearch, "finalize", "final_search", times)
    expand = BeamSearch.expand

    def counted(self, *a, **k):
        times["expansions"] = times.get("expansions", 0) + 1
        return expand(self, *a, **k)

    BeamSearch.expand = counted
    cfg = InferenceConfig(model=args.model, decoder="bsbs", block_ms=args.block_ms, beam=args.beam,
                          lm=args.lm, lm_weight=args.lm_weight if args.lm else 0.0, threads=1)
    loaded, lm = load_inference(cfg)
    rows = sorted(read_manifest(Path(args.data)), key=lambda r: r["id"])[: args.max_utts][:: args.every]
    chunk = int(0.1 * loaded.features.sample_rate)
    for n, row in enumerate([rows[0]] + rows):  # the first one again as a warm-up, not reported
        wave = load_audio(row["audio"])
        t0 = time.perf_counter()  # the loop of asr decode (streaming/cli/decode.py)
        rec = Recognizer(loaded, cfg, lm=lm)
        finals = []
        last = max(0, (wave.numel() - 1) // chunk * chunk)
        for s in range(0, last, chunk):
            finals += [r for r in rec.accept_waveform(wave[s:s + chunk].numpy()) if r.is_final]
        times.clear()
        times["on"] = True
        t_last = time.perf_counter()
        finals += [r for r in rec.accept_waveform(wave[last:].numpy()) + rec.finalize() if r.is_final]
        text = " ".join(r.text for r in finals if r.text)
        t1 = time.perf_counter()
        times["on"] = False
        if n == 0:
            continue
        window = 1000 * (t1 - t_last)
        parts = {k: 1000 * times.get(k, 0.0) for k in PARTS[:-1]}
        parts["other"] = window - sum(parts.values())
        print(json.dumps({"id": row["id"], "ref": row["text"], "hyp": text, "latency_ms": window,
                          "compute_s": t1 - t0, "audio_s": wave.numel() / loaded.features.sample_rate,
                          "expansions": times.get("expansions", 0), "parts_ms": parts}), flush=True)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _summary(rows: list[dict]) -> dict:
    import jiwer

    audio = sum(r["audio_s"] for r in rows)
    lat = [r["latency_ms"] for r in rows]
    return {"wer": round(100 * jiwer.wer([r["ref"] for r in rows], [r["hyp"] for r in rows]), 2),
            "rtf": round(sum(r["compute_s"] for r in rows) / audio, 4),
            "latency_ms_p50": round(_percentile(lat, 0.5), 1), "latency_ms_p90": round(_percentile(lat, 0.9), 1),
            "latency_ms_mean": round(sum(lat) / len(lat), 1),
            "expansions_mean": round(sum(r["expansions"] for r in rows) / len(rows), 2),
            "parts_ms_mean": {k: round(sum(r["parts_ms"][k] for r in rows) / len(rows), 1) for k in PARTS},
            "utterances": len(rows), "audio_seconds": round(audio, 1)}


def _tree(rev: str, dest: Path, files: list[str]) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for f in files:
        shutil.copy2(ROOT / f, dest / f)
    return dest


def _run(name: str, tree: Path, overrides: dict, args: argparse.Namespace) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", args.model, "--data", args.data,
           "--every", str(args.every), "--max-utts", str(args.max_utts), "--beam", str(args.beam),
           "--block-ms", str(args.block_ms), "--lm-weight", str(args.lm_weight), "--overrides", json.dumps(overrides)]
    cmd += ["--lm", args.lm] if args.lm else []
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if out.returncode:
        raise SystemExit(f"{name}: worker failed:\n{out.stderr[-3000:]}")
    print(f"{name}: done", file=sys.stderr, flush=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="HEAD", help="git revision of the 'before' code")
    p.add_argument("--after-files", nargs="*", default=None,
                   help="the after tree is --before plus these files of the working tree (default: the working tree)")
    p.add_argument("--variant", action="append", default=[], help="NAME=JSON: the after tree with BsbsConfig overrides")
    p.add_argument("--no-before", action="store_true", help="run only the after tree and the variants")
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--lm", default=str(ROOT / "models" / "default" / "lm"), help="fusion LM ('' for none)")
    p.add_argument("--lm-weight", type=float, default=0.4)
    p.add_argument("--data", default=str(ROOT / "egs" / "default" / "data" / "devtest" / "librispeech_dev.jsonl"))
    p.add_argument("--every", type=int, default=1, help="every k-th utterance (by id)")
    p.add_argument("--max-utts", type=int, default=100000)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--jobs", type=int, default=2, help="workers at a time (1 thread each)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bsbs_latency"))
    p.add_argument("--plot", nargs="+", default=None, metavar="JSON",
                   help="only plot WER against final latency p50/p90 of these results files into --out.png")
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.plot:
        return plot([Path(f) for f in args.plot], Path(args.out + ".png"))
    args.data = str(Path(args.data).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, tuple[Path, dict]] = {}
        if not args.no_before:
            runs["before"] = (_tree(args.before, Path(tmp) / "before", []), {})
        after = ROOT if args.after_files is None else _tree(args.before, Path(tmp) / "after", args.after_files)
        runs["after"] = (after, {})
        for v in args.variant:
            name, _, spec = v.partition("=")
            runs[name] = (after, json.loads(spec))
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {k: pool.submit(_run, k, tree, ov, args) for k, (tree, ov) in runs.items()}
            out = {k: f.result() for k, f in futures.items()}
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    _write(args, out, {k: ov for k, (_, ov) in runs.items()}, rev)


def _write(args, out: dict[str, list[dict]], overrides: dict, rev: str) -> None:
    summary = {k: _summary(v) for k, v in out.items()}
    base = "before" if "before" in out else "after"
    same = {k: sum(a["hyp"] == b["hyp"] for a, b in zip(out[base], v)) for k, v in out.items()}
    s0 = summary[base]
    lines = [f"BSBS final latency on `{Path(args.data).name}` ({s0['utterances']} utterances, every {args.every} by id, "
             f"{s0['audio_seconds']} s), model `{Path(args.model).name}`, LM "
             f"{'`' + Path(args.lm).name + '` weight ' + str(args.lm_weight) if args.lm else 'none'}, {args.block_ms} ms "
             f"blocks, beam {args.beam}, 1 thread per worker, {args.jobs} workers at a time; before = `{rev}`, "
             f"after = {'the working tree' if args.after_files is None else f'`{rev}` + ' + ', '.join(args.after_files)}.",
             "", f"| code | WER % | RTF | final latency p50 / p90 / mean (ms) | expansions after the audio | "
             f"same hyps as {base} | " + " | ".join(f"{p} ms" for p in PARTS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(PARTS)]
    for k, s in summary.items():
        name = k if not overrides[k] else f"{k} `{json.dumps(overrides[k])}`"
        lines.append(f"| {name} | {s['wer']} | {s['rtf']} | {s['latency_ms_p50']} / {s['latency_ms_p90']} / "
                     f"{s['latency_ms_mean']} | {s['expansions_mean']} | {same[k]} / {s['utterances']} | "
                     + " | ".join(str(s["parts_ms_mean"][p]) for p in PARTS) + " |")
    lines += ["", "Parts: means over the utterances of the latency window (the last chunk and finalize): encoder "
              "steps, block searches (`extend_block`), the final search (`finalize`), the rest (features, CTC head, "
              "forced alignment, detokenization)."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(
        {"summary": summary, "overrides": overrides, "identical_hypotheses": same, "before": rev,
         "after_files": args.after_files, "data": args.data, "every": args.every, "load_average": os.getloadavg(),
         "utterances": {k: [{x: r[x] for x in ("id", "hyp", "latency_ms", "compute_s", "expansions", "parts_ms")}
                            for r in v] for k, v in out.items()}}, indent=1))


def plot(files: list[Path], png: Path) -> None:
    """WER against final latency (p50 filled, p90 open, joined) of every code in ``files``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for f, marker in zip(files, "osD^v"):
        data = json.loads(f.read_text())
        for k, s in data["summary"].items():
            line = ax.plot([s["latency_ms_p50"], s["latency_ms_p90"]], [s["wer"]] * 2, "-", alpha=0.4)[0]
            ax.plot(s["latency_ms_p50"], s["wer"], marker, color=line.get_color())
            ax.plot(s["latency_ms_p90"], s["wer"], marker, color=line.get_color(), mfc="none")
            ax.annotate(f"{k} ({s['utterances']})", (s["latency_ms_p50"], s["wer"]), textcoords="offset points",
                        xytext=(3, 4), fontsize=8)
    ax.set_xlabel("final latency ms (filled: p50, open: p90)")
    ax.set_ylabel("WER %")
    ax.set_title("BSBS + LM, librispeech-mini dev, 640 ms blocks, 1 thread")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(png)


if __name__ == "__main__":
    main()
