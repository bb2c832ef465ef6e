"""Decode a data set and score it: hypotheses, per-utterance errors, WER, real-time factor and
final-result latency. The last line printed is one JSON object with the numbers and the settings.

Audio is fed through the recognizer (the same one as ``asr transcribe`` and ``asr serve``) in 100 ms
chunks, as a live client would send it. Final-result latency is the compute time from the arrival
of the last chunk to the final result. RTF is total compute / audio duration.

Examples:
  asr decode --data ../shared/corpora/speechocean762/dev --decoder sar --out exp/dec/sar
  asr decode --model models/default --data test.jsonl --decoder offline --block-ms full --out exp/dec/off
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from asr.inference import add_inference_arguments, check_model_files, inference_config_from_args
from streaming.shard import add_arguments as add_shard_arguments

__all__ = ["add_arguments", "decode_rows", "run", "write_results"]

CHUNK_SECONDS = 0.1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="Kaldi data dir or JSONL manifest")
    p.add_argument("--out", required=True, help="output folder (hyp.txt, ref.txt, errors.txt, summary.json)")
    p.add_argument("--max-utts", type=int, default=None, help="decode only the first N utterances (sorted by id)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(p)
    add_shard_arguments(p)  # --rank-timeout (torchrun)
    p.epilog = "--block-ms full: the whole utterance is one block (full-context encoder), decoded at its end."


def _rows(data: str) -> list[dict]:
    from asr.data import read_manifest
    from asr.data.kaldi import read_kaldi_dir

    path = Path(data)
    if path.is_dir():
        report = read_kaldi_dir(path, progress=False)
        for utt, msg in report.errors:
            print(f"error: {utt}: {msg}", file=sys.stderr)
        return report.rows
    return read_manifest(path)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(args: argparse.Namespace) -> int:
    cfg = inference_config_from_args(args)  # checked before the model loads: settings, model files, data
    check_model_files(cfg)
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data}: no such Kaldi data dir or JSONL manifest")
    if args.max_utts is not None and args.max_utts < 1:
        raise ValueError(f"--max-utts: expected an integer >= 1, got {args.max_utts}")

    from asr.inference import load_inference

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one shard per rank (streaming/shard.py)
        from streaming.shard import run_sharded

        return run_sharded(args, _rows, decode_rows, write_results)
    loaded, lm = load_inference(cfg)
    rows = sorted(_rows(args.data), key=lambda r: r["id"])[: args.max_utts]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, decode_rows(rows, loaded, lm, cfg, args.quiet), cfg, loaded, args.data)
    return 0


def decode_rows(rows: list[dict], loaded, lm, cfg, quiet: bool = False):
    """Decode ``rows`` in order: a :class:`streaming.shard.Decoded` (unreadable rows left out)."""
    from tqdm import tqdm

    from asr.audio import AudioError, load_audio
    from streaming import Recognizer
    from streaming.shard import Decoded

    refs, hyps, ids, latencies = [], [], [], []
    compute, audio = [], []
    errors = 0
    chunk = int(CHUNK_SECONDS * loaded.features.sample_rate)
    for row in tqdm(rows, desc=f"decode {cfg.decoder}", unit="utt", disable=quiet, file=sys.stderr):
        try:
            wave = load_audio(row["audio"], row.get("start"), row.get("end"))
        except AudioError as e:
            print(f"error: {row['id']}: {e}", file=sys.stderr)
            errors += 1
            continue
        t0 = time.perf_counter()
        rec = Recognizer(loaded, cfg, lm=lm)
        finals = []
        last = max(0, (wave.numel() - 1) // chunk * chunk)
        for s in range(0, last, chunk):
            finals += [r for r in rec.accept_waveform(wave[s:s + chunk].numpy()) if r.is_final]
        t_last = time.perf_counter()
        finals += [r for r in rec.accept_waveform(wave[last:].numpy()) + rec.finalize() if r.is_final]
        text = " ".join(r.text for r in finals if r.text)
        t1 = time.perf_counter()
        latencies.append(1000 * (t1 - t_last))
        compute.append(t1 - t0)
        audio.append(wave.numel() / loaded.features.sample_rate)
        ids.append(row["id"])
        refs.append(row["text"])
        hyps.append(text)
    return Decoded(ids, refs, hyps, latencies, compute, audio, errors)


def write_results(out: Path, decoded, cfg, loaded, data: str, extra: dict | None = None) -> dict:
    """Score ``decoded`` (a :class:`streaming.shard.Decoded`) and write hyp.txt, ref.txt, errors.txt and
    summary.json into ``out``; print the summary as the last line and return it."""
    import jiwer
    import torch

    ids, refs, hyps, latencies = decoded.ids, decoded.refs, decoded.hyps, decoded.latencies_ms
    compute, audio, errors = sum(decoded.compute_s), sum(decoded.audio_s), decoded.unreadable
    scored = jiwer.process_words(refs, [h if h else "" for h in hyps]) if refs else None
    with open(out / "hyp.txt", "w") as fh, open(out / "ref.txt", "w") as fr, open(out / "errors.txt", "w") as fe:
        for i, (utt, ref, hyp) in enumerate(zip(ids, refs, hyps)):
            fh.write(f"{utt} {hyp}\n")
            fr.write(f"{utt} {ref}\n")
            one = jiwer.process_words(ref, hyp or "")
            n = one.substitutions + one.deletions + one.insertions
            fe.write(f"{utt} errors={n} sub={one.substitutions} del={one.deletions} ins={one.insertions} "
                     f"words={len(ref.split())}\n  REF: {ref}\n  HYP: {hyp}\n")
    summary = {
        "wer": round(100 * scored.wer, 2) if scored else None,
        "substitutions": scored.substitutions if scored else 0, "deletions": scored.deletions if scored else 0,
        "insertions": scored.insertions if scored else 0, "utterances": len(ids), "unreadable": errors,
        "audio_seconds": round(audio, 1), "rtf": round(compute / max(audio, 1e-9), 4),
        "latency_ms_p50": round(_percentile(latencies, 0.5), 1), "latency_ms_p90": round(_percentile(latencies, 0.9), 1),
        "decoder": cfg.decoder, "block_ms": "full" if cfg.block_ms is None else cfg.block_ms,
        "left_blocks": cfg.left_blocks, "beam": cfg.beam, "ctc_weight": cfg.ctc_weight, "lm": cfg.lm,
        "lm_weight": cfg.lm_weight, "session_context": cfg.session_context, "tentative_frames": cfg.tentative_frames,
        "threads": torch.get_num_threads(),
        "model": str(loaded.path), "data": data, **(extra or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary
