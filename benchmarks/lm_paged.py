"""Session context with PagedEviction: perplexity against the full cache, and KV memory over a
simulated 1-hour session.

    python benchmarks/lm_paged.py [--tokens 15360]

A session is the held-out brown text, one line = one segment (a final), fed through
:class:`asr.models.lm_session.SessionLM` exactly as recognition would: each segment is scored
given the context carried from the earlier ones (``commit`` returns its log-probabilities), then
becomes context. ``--tokens`` 15360 tokens is about an hour of speech (~150 words/min at ~1.7
tokens/word with the 256-piece tokenizer). Budgets in tokens (pages of 16; the first page is a
sink, the newest two pages are never evicted); ``none`` = each segment alone (today's fusion);
``full`` = unbounded cache. Uses the LMs of lm_xpos.py (trains them when missing).
Writes benchmarks/results/lm_paged.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from asr.models.lm_session import SessionContextConfig, SessionLM
from asr.tokenizer import SOS_EOS
from lm_common import RESULTS, TRAIN_LEN, cached_lm, streams


def segments(held: torch.Tensor, max_tokens: int) -> list[list[int]]:
    """Held-out lines (split at ``<s>``) up to ``max_tokens`` tokens in all."""
    out, cur, total = [], [], 0
    for t in held.tolist()[1:]:
        if t == SOS_EOS:
            out.append(cur)
            total += len(cur) + 1
            cur = []
            if total >= max_tokens:
                break
        else:
            cur.append(t)
    return out


def run(lm, segs: list[list[int]], budget: int | None, no_context: bool, every: int = 1024) -> dict:
    cfg = SessionContextConfig(max_tokens=budget, page_size=16, sink_pages=1, recent_pages=2)
    session = SessionLM(lm, cfg)
    nll, count, peak, trace, next_mark = 0.0, 0, 0, [], every
    t0 = time.perf_counter()
    for seg in segs:
        if no_context:
            session.reset()
        logp = session.commit(seg)
        nll -= float(logp.sum())
        count += logp.numel()
        peak = max(peak, session.nbytes)
        if count >= next_mark:
            trace.append((count, session.nbytes))
            next_mark += every
    return {"ppl": math.exp(nll / count), "tokens": count, "peak_kv_kib": peak / 1024,
            "final_kv_kib": session.nbytes / 1024, "seconds": time.perf_counter() - t0,
            "evicted_pages": session.caches[0].evicted, "trace": trace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=15360)
    p.add_argument("--budgets", default="64,128,256,512")
    p.add_argument("--steps", type=int, default=480, help="training steps per LM (when not cached)")
    args = p.parse_args()
    torch.set_num_threads(1)
    train_ids, held = streams()
    segs = segments(held, args.tokens)
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = []
    for pos in ("xpos", "rope"):
        lm = cached_lm(pos, train_ids, args.steps, 256)
        for name, budget, alone in ([("none (segment alone)", None, True), ("full cache", None, False)]
                                    + [(f"budget {b}", b, False) for b in budgets]):
            r = run(lm, segs, budget, alone)
            r.update(pos=pos, context=name)
            rows.append(r)
            print(f"{pos:5s} {name:22s} ppl {r['ppl']:8.3f}  peak KV {r['peak_kv_kib']:8.1f} KiB  "
                  f"final {r['final_kv_kib']:8.1f} KiB  {r['seconds']:.1f} s  evicted {r['evicted_pages']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lm_paged.json").write_text(json.dumps({"segments": len(segs), "rows": rows}, indent=1))
    full = {r["pos"]: r["ppl"] for r in rows if r["context"] == "full cache"}
    lines = ["# Session context with PagedEviction", "",
             f"Held-out brown text as one session: {len(segs)} segments (lines), {rows[0]['tokens']} scored "
             f"tokens (about 1 hour of speech). LMs of `lm_xpos.py` (2 layers x 128, trained on "
             f"{TRAIN_LEN}-token windows). Each segment is scored with the context carried from the earlier "
             "ones, then committed (`SessionLM.commit`); pages of 16 tokens, page score = mean "
             "||v||/||k|| (PagedEviction's proxy), first page a sink, newest 2 pages kept. KV = keys + "
             "values of both layers, float32. `python benchmarks/lm_paged.py`", "",
             "| positions | context | perplexity | vs full cache | peak KV (KiB) | KV at end (KiB) | "
             "pages evicted (layer 0) | time (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pos']} | {r['context']} | {r['ppl']:.3f} | {r['ppl'] / full[r['pos']] - 1:+.1%} | "
                     f"{r['peak_kv_kib']:.1f} | {r['final_kv_kib']:.1f} | {r['evicted_pages']} | "
                     f"{r['seconds']:.1f} |")
    trace_rows = [r for r in rows if r["pos"] == "xpos" and r["context"] in ("full cache", f"budget {budgets[-1]}")]
    lines += ["", f"KV memory (KiB) over the session, xpos, full cache vs budget {budgets[-1]}:", "",
              "| tokens | " + " | ".join(r["context"] for r in trace_rows) + " |", "|---|---|---|"]
    for i in range(0, len(trace_rows[0]["trace"]), 2):
        n = trace_rows[0]["trace"][i][0]
        lines.append(f"| {n} | " + " | ".join(f"{r['trace'][i][1] / 1024:.0f}" for r in trace_rows) + " |")
    (RESULTS / "lm_paged.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
