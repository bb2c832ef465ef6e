"""BSBS speed before and after, in one run: WER, RTF, final latency and where the time goes.

    python benchmarks/bsbs_speed.py [--before 2cd1032] [--max-utts 100] [--threads 2] [--lm models/default/lm]

``--before`` is a git revision: its tree is unpacked (``git archive``) into a temporary folder and
run next to the working tree, one worker process each, fed the same utterances in turn (ABBA order,
so that load on the shared machine falls on both alike). Each worker runs the recognizer
(``asr decode``'s loop: 100 ms chunks, final latency = compute from the last chunk to the final
result) with the same model files, and times the pieces by wrapping their methods:

- encoder: ``Recognizer.step_encoder``;
- decoder, CTC prefix, LM: ``score``/``score_partial`` and ``select_state`` of each scorer;
- search bookkeeping: the rest of ``BsbsDecoder.accept_block`` and ``finalize`` (candidate
  selection, top-k, beams, hypotheses, the CTC forced alignment of the final).

Writes benchmarks/results/bsbs_speed[_lm].{md,json}.
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
RESULTS = ROOT / "benchmarks" / "results"
SHARED = next((d / "shared" for d in ROOT.parents if (d / "shared" / "corpora").is_dir()), ROOT.parent / "shared")
PARTS = ("encoder", "decoder", "ctc_prefix", "lm", "search_other")


def _timed(cls, name: str, part: str, times: dict) -> None:
    """Wrap ``cls.name`` so that its wall time adds to ``times[part]`` (not re-entrant)."""
    fn = getattr(cls, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[part] = times.get(part, 0.0) + time.perf_counter() - t0

    setattr(cls, name, wrapper)


def worker(args: argparse.Namespace) -> None:
    """Decode the utterance whose index arrives on each stdin line; one JSON line out per utterance."""
    from asr.audio import load_audio
    from asr.data.kaldi import read_kaldi_dir
    from asr.decode.bsbs import BsbsDecoder
    from asr.inference import InferenceConfig, load_inference
    from asr.models.decoder import DecoderScorer
    from asr.models.lm import LMScorer
    from asr.search import CTCPrefixScorer
    from streaming import Recognizer

    times: dict[str, float] = {}
    _timed(Recognizer, "step_encoder", "encoder", times)
    for cls, names, part in ((DecoderScorer, ("score", "select_state"), "decoder"),
                             (CTCPrefixScorer, ("score_partial", "select_state"), "ctc_prefix"),
                             (LMScorer, ("score", "select_state"), "lm")):
        for name in names:
            _timed(cls, name, part, times)
    for name in ("accept_block", "finalize"):
        _timed(BsbsDecoder, name, "search", times)
    cfg = InferenceConfig(model=args.model, decoder="bsbs", block_ms=args.block_ms, beam=args.beam,
                          lm=args.lm, lm_weight=args.lm_weight if args.lm else 0.0, threads=args.threads)
    loaded, lm = load_inference(cfg)
    rows = sorted(read_kaldi_dir(Path(args.data), progress=False).rows, key=lambda r: r["id"])[: args.max_utts]
    chunk = int(0.1 * loaded.features.sample_rate)
    warm = load_audio(rows[0]["audio"])
    for line in sys.stdin:
        i = int(line)
        wave = warm if i < 0 else load_audio(rows[i]["audio"])
        times.clear()
        t0, c0 = time.perf_counter(), time.process_time()  # the loop of asr decode (streaming/cli/decode.py)
        rec = Recognizer(loaded, cfg, lm=lm)
        finals = []
        last = max(0, (wave.numel() - 1) // chunk * chunk)
        for s in range(0, last, chunk):
            finals += [r for r in rec.accept_waveform(wave[s:s + chunk].numpy()) if r.is_final]
        t_last = time.perf_counter()
        finals += [r for r in rec.accept_waveform(wave[last:].numpy()) + rec.finalize() if r.is_final]
        t1, c1 = time.perf_counter(), time.process_time()
        parts = {k: times.get(k, 0.0) for k in ("encoder", "decoder", "ctc_prefix", "lm")}
        parts["search_other"] = times.get("search", 0.0) - parts["decoder"] - parts["ctc_prefix"] - parts["lm"]
        print(json.dumps({"i": i, "id": rows[max(i, 0)]["id"], "ref": rows[max(i, 0)]["text"],
                          "hyp": " ".join(r.text for r in finals if r.text), "compute_s": t1 - t0, "cpu_s": c1 - c0,
                          "latency_ms": 1000 * (t1 - t_last), "audio_s": wave.numel() / loaded.features.sample_rate,
                          "parts": parts}), flush=True)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _summary(rows: list[dict]) -> dict:
    import jiwer

    audio = sum(r["audio_s"] for r in rows)
    lat = [r["latency_ms"] for r in rows]
    parts = {k: sum(r["parts"][k] for r in rows) / audio for k in PARTS}
    return {"wer": round(100 * jiwer.wer([r["ref"] for r in rows], [r["hyp"] for r in rows]), 2),
            "rtf": round(sum(r["compute_s"] for r in rows) / audio, 4),
            "cpu_per_audio_s": round(sum(r["cpu_s"] for r in rows) / audio, 4),
            "latency_ms_p50": round(_percentile(lat, 0.5), 1), "latency_ms_p90": round(_percentile(lat, 0.9), 1),
            "rtf_parts": {k: round(v, 4) for k, v in parts.items()}, "audio_seconds": round(audio, 1),
            "utterances": len(rows)}


def _start(tree: Path, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", args.model, "--data", args.data,
           "--max-utts", str(args.max_utts), "--threads", str(args.threads), "--beam", str(args.beam),
           "--block-ms", str(args.block_ms), "--lm-weight", str(args.lm_weight)] + (["--lm", args.lm] if args.lm else [])
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": args.wait_policy}
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)


def _ask(proc: subprocess.Popen, i: int) -> dict:
    proc.stdin.write(f"{i}\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"worker exited (rc {proc.wait()})")
    return json.loads(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="2cd1032", help="git revision of the 'before' code")
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--data", default=str(SHARED / "corpora" / "speechocean762" / "dev"))
    p.add_argument("--max-utts", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--lm", default=None, help="LM directory for shallow fusion (e.g. models/default/lm)")
    p.add_argument("--lm-weight", type=float, default=0.4)
    p.add_argument("--wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY of the workers (PASSIVE: the idle one does not spin on the shared cores)")
    p.add_argument("--name", default=None, help="results file stem (default: bsbs_speed, bsbs_speed_lm with --lm)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.lm:
        args.lm = str(Path(args.lm).resolve())
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"before": Path(tmp), "after": ROOT}
        procs = {k: _start(t, args) for k, t in trees.items()}
        for proc in procs.values():
            _ask(proc, -1)  # warm-up (first-call allocations), not counted
        out: dict[str, list[dict]] = {k: [] for k in trees}
        for i in range(args.max_utts):
            order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
            for k in order:
                out[k].append(_ask(procs[k], i))
            print(f"{i + 1}/{args.max_utts}", end="\r", file=sys.stderr, flush=True)
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    summary = {k: _summary(v) for k, v in out.items()}
    same = sum(a["hyp"] == b["hyp"] for a, b in zip(out["before"], out["after"]))
    _write(args, summary, same, rev, head, out)


def _write(args, summary: dict, same: int, rev: str, head: str, out: dict) -> None:
    b, a = summary["before"], summary["after"]
    lm = f"LM `{Path(args.lm).name}` weight {args.lm_weight}" if args.lm else "no LM"
    lines = [f"BSBS on `{Path(args.data).parent.name}/{Path(args.data).name}` (first {a['utterances']} utterances, "
             f"{a['audio_seconds']} s), model `{Path(args.model).name}`, {lm}, {args.block_ms} ms blocks, beam "
             f"{args.beam}, {args.threads} CPU threads, OMP_WAIT_POLICY={args.wait_policy}; before = `{rev}`, after = `{head}` (working tree), "
             "run side by side, utterances in turn.", "",
             "| code | WER % | RTF | CPU s / audio s | final latency p50 (ms) | p90 (ms) |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {s['wer']} | {s['rtf']} | {s['cpu_per_audio_s']} | {s['latency_ms_p50']} | {s['latency_ms_p90']} |"
              for k, s in summary.items()]
    lines += ["", f"Identical hypotheses: {same} / {a['utterances']}.", "",
              "Where the time goes (seconds of compute per second of audio):", "",
              "| code | " + " | ".join(PARTS) + " | total |", "|---|" + "---|" * (len(PARTS) + 1)]
    lines += [f"| {k} | " + " | ".join(str(s["rtf_parts"][p]) for p in PARTS) + f" | {s['rtf']} |"
              for k, s in summary.items()]
    lines += ["", "search_other: the search outside the scorers (candidate selection, top-k, beam and hypothesis "
              "bookkeeping, CTC forced alignment of the final); the total also holds features, CTC head and "
              "endpointing.", "", f"Target RTF <= 0.05: {'met' if a['rtf'] <= 0.05 else 'not met'} ({a['rtf']})."]
    text = "\n".join(lines) + "\n"
    print(text)
    name = args.name or ("bsbs_speed_lm" if args.lm else "bsbs_speed")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"summary": summary, "identical_hypotheses": same, "before": rev, "after": head, "threads": args.threads, "wait_policy": args.wait_policy, "load_average": os.getloadavg(),
         "lm": args.lm, "lm_weight": args.lm_weight if args.lm else 0.0, "data": args.data,
         "utterances": {k: [{x: r[x] for x in ("id", "hyp", "compute_s", "cpu_s", "latency_ms")} for r in v]
                        for k, v in out.items()}}, indent=1))


if __name__ == "__main__":
    main()
