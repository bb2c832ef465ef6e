"""Long-form WER with and without cross-segment context (``--session-context N``), through the Recognizer.

    python benchmarks/lm_session_wer.py [--per-chapter 10] [--decoders bsbs,sar,offline] [--device cpu]

Sessions = consecutive utterances of one librispeech-mini dev chapter (ids speaker-chapter-index,
read in place from ../shared/corpora), joined into one audio stream with ``--gap-s`` of faint noise
between them (a reading with pauses). Each session streams through :class:`streaming.Recognizer`
(models/default, 640 ms blocks): the endpointer cuts it into segments, and each segment's final is
what the next segment's context carries. WER is over whole sessions (the joined finals against the
joined references). Per decoder: bsbs / offline with no LM, the LM per segment (``--lm`` as
before) and the LM with session context of N tokens (SessionLM, PagedEviction); sar without and
with its label context carried. Also: the LM's perplexity on the reference text with and without
the earlier utterances as context, and the session KV memory over a simulated 1-hour session
(the dev references' tokens cycled for 3600 s of their audio, committed segment by segment).

Writes benchmarks/results/lm_session_wer.{md,json} (runs for different ``--decoders`` merge into
the json, so decoders can run in separate processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from asr.audio import load_audio
from asr.data.kaldi import read_kaldi_dir
from asr.inference import InferenceConfig
from asr.models.io import load_model_dir
from asr.models.lm_io import load_lm_dir
from asr.models.lm_session import SessionContextConfig, SessionLM
from lm_common import RESULTS, ROOT, SHARED

CORPUS = SHARED / "corpora" / "librispeech-mini" / "dev"
OUT = RESULTS / "lm_session_wer"


def sessions(per_chapter: int) -> dict[str, list[dict]]:
    """chapter -> its first ``per_chapter`` utterance rows in id (reading) order."""
    chapters = defaultdict(list)
    for r in read_kaldi_dir(CORPUS, progress=False).rows:
        chapters["-".join(r["id"].split("-")[:3])].append(r)
    return {k: sorted(rows, key=lambda r: r["id"])[:per_chapter] for k, rows in sorted(chapters.items())}


def session_audio(rows: list[dict], gap_s: float) -> list[np.ndarray]:
    """The chunks of one session: each utterance followed by ``gap_s`` of -50 dBFS noise."""
    rng = np.random.default_rng(0)
    out = []
    for r in rows:
        wave = load_audio(r["audio"], r.get("start"), r.get("end")).numpy()
        gap = 0.003 * rng.standard_normal(int(16000 * gap_s)).astype(np.float32)
        out.append(np.concatenate([wave, gap]))
    return out


def run_config(loaded, lm, cfg: InferenceConfig, chapters, audio) -> dict:
    """Every session through one Recognizer each: hyps, segments, compute time, peak session KV."""
    from streaming import Recognizer

    hyps, segments, peak_kv, t0 = {}, 0, 0, time.perf_counter()
    for name in chapters:
        rec = Recognizer(loaded, cfg, lm=lm if cfg.lm_weight else None)
        finals = []
        for chunk in audio[name]:
            finals += [r for r in rec.accept_waveform(chunk) if r.is_final]
            session = getattr(rec.decoder, "session", None)
            peak_kv = max(peak_kv, session.nbytes if session is not None else 0)
        finals += [r for r in rec.finalize() if r.is_final]
        hyps[name] = " ".join(r.text for r in finals if r.text)
        segments += sum(1 for r in finals if r.text)
    return {"hyps": hyps, "segments": segments, "compute_s": round(time.perf_counter() - t0, 1),
            "peak_session_kv_kib": round(peak_kv / 1024, 1)}


@torch.no_grad()
def reference_ppl(lm, tokenizer, chapters, context: int | None) -> float:
    """Perplexity of the LM on the reference utterances (each ``<s> text <s>``) of every session,
    each alone (``context`` None) or after the earlier ones (SessionLM of ``context`` tokens)."""
    total, n = 0.0, 0
    for rows in chapters.values():
        session = SessionLM(lm, SessionContextConfig.for_tokens(context) if context else SessionContextConfig())
        for r in rows:
            logp = session.commit(tokenizer.encode(r["text"]))
            total, n = total - float(logp.sum()), n + logp.numel()
            if not context:
                session.reset()
    return math.exp(total / n)


@torch.no_grad()
def hour_memory(lm, tokenizer, contexts: list[int | None], hours: float = 1.0) -> dict:
    """Session KV memory over a simulated session: the dev references (all chapters, in order) cycled
    until their audio adds up to ``hours``, committed one utterance at a time."""
    rows = [r for rows in sessions(10 ** 6).values() for r in rows]
    segs, seconds = [], 0.0
    while seconds < 3600 * hours:
        for r in rows:
            segs.append(tokenizer.encode(r["text"]))
            seconds += float(r["duration"])
            if seconds >= 3600 * hours:
                break
    out = {"segments": len(segs), "tokens": sum(len(s) + 1 for s in segs), "audio_s": round(seconds)}
    for ctx in contexts:
        session = SessionLM(lm, SessionContextConfig.for_tokens(ctx) if ctx else SessionContextConfig(max_tokens=None))
        marks, t0 = {}, time.perf_counter()
        for i, seg in enumerate(segs):
            session.commit(seg)
            if i + 1 in (len(segs) // 4, len(segs) // 2, len(segs)) or i == 9:
                marks[f"after {i + 1} segments ({session.position} tokens)"] = round(session.nbytes / 1024, 1)
        out[str(ctx)] = {"kib": marks, "cached_tokens": session.caches[0].length,
                         "commit_ms": round(1000 * (time.perf_counter() - t0) / len(segs), 2)}
    return out


def wer(refs: dict[str, str], hyps: dict[str, str]) -> float:
    import jiwer

    names = sorted(refs)
    return round(100 * jiwer.wer([refs[k] for k in names], [hyps[k] for k in names]), 2)


def _configs(decoders: list[str], lm_dir: str, lm_weight: float, contexts: list[int], beam: int, no_lm: bool):
    base = InferenceConfig(block_ms=640, beam=beam, threads=1)
    for d in decoders:
        if d == "sar":
            yield d, "no carry", dataclasses.replace(base, decoder="sar")
            for n in contexts:
                yield d, f"label context {n}", dataclasses.replace(base, decoder="sar", session_context=n)
            continue
        if no_lm:
            yield d, "no LM", dataclasses.replace(base, decoder=d)
        with_lm = dataclasses.replace(base, decoder=d, lm=lm_dir, lm_weight=lm_weight)
        yield d, "LM per segment", with_lm
        for n in contexts:
            yield d, f"LM + session context {n}", dataclasses.replace(with_lm, session_context=n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-chapter", type=int, default=10, help="first N utterances of each chapter")
    p.add_argument("--decoders", default="bsbs,sar,offline")
    p.add_argument("--lm", default=str(ROOT / "models" / "default" / "lm"))
    p.add_argument("--lm-weight", type=float, default=0.3)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--contexts", default="64,256", help="session context budgets in tokens")
    p.add_argument("--gap-s", type=float, default=1.0, help="noise between the utterances of a session")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=OUT, help="results path without suffix")
    p.add_argument("--skip-extras", action="store_true",
                   help="no perplexity and 1-hour memory (kept from an earlier run in the json)")
    p.add_argument("--skip-no-lm", action="store_true", help="bsbs/offline: only the runs with the LM")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json, decode nothing")
    args = p.parse_args()
    if args.report_only:
        args.out.with_suffix(".md").write_text(report(json.loads(args.out.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(1)
    contexts = [int(c) for c in args.contexts.split(",")]
    loaded = load_model_dir(ROOT / "models" / "default", args.device)
    lm = load_lm_dir(args.lm, args.device, tokenizer=loaded.tokenizer).lm
    chapters = sessions(args.per_chapter)
    audio = {k: session_audio(rows, args.gap_s) for k, rows in chapters.items()}
    refs = {k: " ".join(r["text"] for r in rows) for k, rows in chapters.items()}
    seconds = sum(c.size for chunks in audio.values() for c in chunks) / 16000
    runs = {}
    for decoder, name, cfg in _configs(args.decoders.split(","), args.lm, args.lm_weight, contexts, args.beam,
                                        no_lm=not args.skip_no_lm):
        cfg = dataclasses.replace(cfg, device=args.device)
        out = run_config(loaded, lm, cfg, chapters, audio)
        out["wer"] = wer(refs, out["hyps"])
        out["rtf"] = round(out["compute_s"] / seconds, 3)
        runs[f"{decoder} | {name}"] = out
        print(f"{decoder:8s} {name:28s} WER {out['wer']:6.2f} %  segments {out['segments']}  RTF {out['rtf']}  "
              f"peak KV {out['peak_session_kv_kib']} KiB", flush=True)
    info = {"command": "python benchmarks/lm_session_wer.py " + " ".join(sys.argv[1:]),
            "sessions": len(chapters), "utterances": sum(len(r) for r in chapters.values()),
            "audio_s": round(seconds, 1), "per_chapter": args.per_chapter, "gap_s": args.gap_s, "lm": args.lm,
            "lm_weight": args.lm_weight, "beam": args.beam, "block_ms": 640, "device": args.device,
            "refs": refs, "runs": runs}
    if not args.skip_extras:
        info["reference_ppl"] = {"each utterance alone": round(reference_ppl(lm, loaded.tokenizer, chapters, None), 2),
                                 **{f"context {n}": round(reference_ppl(lm, loaded.tokenizer, chapters, n), 2)
                                    for n in contexts}}
        info["hour_memory"] = hour_memory(lm, loaded.tokenizer, [*contexts, None])
    write(info, args.out)


def write(info: dict, out: Path) -> None:
    """Merge ``info`` into ``out``.json (runs of other ``--decoders`` kept) and rewrite ``out``.md."""
    out.parent.mkdir(exist_ok=True)
    path = out.with_suffix(".json")
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.is_file() else {}
        info = {**old, **info, "runs": {**old.get("runs", {}), **info["runs"]},
                "commands": sorted(set(old.get("commands", [])) | {info.pop("command")})}
        path.write_text(json.dumps(info, indent=1) + "\n")
    out.with_suffix(".lock").unlink(missing_ok=True)
    out.with_suffix(".md").write_text(report(info))
    print(report(info))


def _short(path: str) -> str:
    """``path`` relative to the checkout when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def report(info: dict) -> str:
    lines = ["# Long-form WER with and without cross-segment context (`--session-context N`)", "",
             f"librispeech-mini dev: {info['sessions']} sessions, one per chapter, each the first "
             f"{info['per_chapter']} utterances in reading order joined with {info['gap_s']:g} s of faint noise "
             f"({info['utterances']} utterances, {info['audio_s'] / 60:.1f} min); each session streams through "
             f"the Recognizer (models/default, {info['block_ms']} ms blocks, left 4 blocks, default endpointing), "
             f"WER over the joined finals of each session. Beam {info['beam']}, CTC weight 0.3; LM "
             f"`{_short(info['lm'])}`, weight {info['lm_weight']}; one thread, "
             f"{info['device']}.", "", "Commands: " + "; ".join(f"`{c}`" for c in info["commands"]), "",
             f"{sum(len(r.split()) for r in info['refs'].values())} reference words: 0.1 % WER is about "
             f"{sum(len(r.split()) for r in info['refs'].values()) / 1000:.1f} words. \"change\" is against the "
             "same decoder without cross-segment context (the LM per segment; sar without the carry); sessions "
             "in the order " + ", ".join(sorted(info["refs"])) + ".", "",
             "| decoder | context | WER | change vs. no context | WER per session | segments | RTF | peak session KV |",
             "|---|---|---|---|---|---|---|---|"]
    runs = info["runs"]
    for key, r in runs.items():
        decoder, name = key.split(" | ")
        base = runs.get(f"{decoder} | {'no carry' if decoder == 'sar' else 'LM per segment'}")
        change = "" if base is None or base is r or "context" not in name else f"{r['wer'] - base['wer']:+.2f}"
        kv = f"{r['peak_session_kv_kib']} KiB" if r["peak_session_kv_kib"] else ""
        each = " / ".join(f"{wer({k: v}, {k: r['hyps'][k]}):.1f}" for k, v in sorted(info["refs"].items()))
        lines.append(f"| {decoder} | {name} | {r['wer']:.2f} % | {change} | {each} | {r['segments']} | {r['rtf']} "
                     f"| {kv} |")
    if "hour_memory" not in info:
        return "\n".join(lines) + "\n"
    ppl = info["reference_ppl"]
    lines += ["", "LM perplexity on the reference text of the same sessions: "
              + ", ".join(f"{k}: {v}" for k, v in ppl.items()) + ".", ""]
    mem = info["hour_memory"]
    marks = list(next(v for v in mem.values() if isinstance(v, dict))["kib"])
    lines += [f"Session KV memory over a simulated {mem['audio_s'] / 3600:.1f}-hour session ({mem['segments']} "
              f"segments, {mem['tokens']} tokens: the dev references cycled, committed one utterance at a time):", "",
              "| context | " + " | ".join(marks) + " | tokens kept at the end | commit |",
              "|---|" + "---|" * (len(marks) + 2)]
    for ctx, m in mem.items():
        if isinstance(m, dict):
            label = "unbounded" if ctx == "None" else f"{ctx} tokens"
            lines.append(f"| {label} | " + " | ".join(f"{v} KiB" for v in m["kib"].values())
                         + f" | {m['cached_tokens']} | {m['commit_ms']} ms |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
