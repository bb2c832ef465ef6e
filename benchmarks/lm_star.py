"""Star Attention against full attention: perplexity of the query tokens after a long context,
and the time to score them (CPU, 1 thread).

    python benchmarks/lm_star.py [--contexts 2048,8192,16384] [--query 256]

Context = the first T held-out brown tokens; query = the next ``--query`` + 1 tokens, of which
the last ``--query`` are scored (each after the previous query tokens). Full attention: exact
causal attention over context + query (:func:`asr.models.lm_star.full_logits`, query slices of
1024 so memory stays O(T)). Star: phase 1 encodes the context in blocks (anchor block prepended,
all blocks in one batch), phase 2 the query attends to every block with the log-sum-exp merge.
Uses the LMs of lm_xpos.py.
Writes benchmarks/results/lm_star.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from asr.models.lm_star import full_logits, star_encode, star_logits
from lm_common import RESULTS, TRAIN_LEN, cached_lm, streams


def _ppl(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return math.exp(float(F.cross_entropy(logits.float(), targets)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", default="2048,8192,16384")
    p.add_argument("--query", type=int, default=256)
    p.add_argument("--blocks", default="256,1024")
    p.add_argument("--steps", type=int, default=480, help="training steps per LM (when not cached)")
    args = p.parse_args()
    torch.set_num_threads(1)
    train_ids, held = streams()
    rows = []
    for pos in ("xpos", "rope"):
        lm = cached_lm(pos, train_ids, args.steps, 256)
        for t in (int(c) for c in args.contexts.split(",")):
            ctx, query = held[:t], held[t : t + args.query + 1]  # scored: query[1:], after query[:-1]
            t0 = time.perf_counter()
            full = full_logits(lm, torch.cat([ctx, query[:-1]]))[t:]
            full_s = time.perf_counter() - t0
            ref = _ppl(full, query[1:])
            for b in (int(x) for x in args.blocks.split(",")):
                t0 = time.perf_counter()
                caches = star_encode(lm, ctx, b)
                phase1 = time.perf_counter() - t0
                logits = star_logits(lm, caches, query[:-1], t)
                star_s = time.perf_counter() - t0
                ppl = _ppl(logits, query[1:])
                rows.append({"pos": pos, "context": t, "block": b, "full_ppl": ref, "star_ppl": ppl,
                             "ppl_change": ppl / ref - 1, "full_s": full_s, "star_s": star_s,
                             "phase1_s": phase1, "speedup": full_s / star_s})
                print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lm_star.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Star Attention vs full attention", "",
             f"LMs of `lm_xpos.py` (2 layers x 128, trained on {TRAIN_LEN}-token windows). Perplexity of the "
             f"{args.query} held-out tokens after a context of T tokens; time = scoring context + query "
             "(CPU, 1 thread; full = exact causal attention in query slices of 1024; star = phase 1 "
             "blockwise-local with the anchor block + phase 2 global with the log-sum-exp merge). "
             "`python benchmarks/lm_star.py`", "",
             "| positions | context T | block | full ppl | star ppl | change | full (s) | star (s) | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pos']} | {r['context']} | {r['block']} | {r['full_ppl']:.3f} | {r['star_ppl']:.3f} | "
                     f"{r['ppl_change']:+.2%} | {r['full_s']:.2f} | {r['star_s']:.2f} | {r['speedup']:.2f}x |")
    (RESULTS / "lm_star.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
