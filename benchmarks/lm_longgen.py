"""LongGen hybrid attention: KV memory and time against length (CPU, 1 thread).

    python benchmarks/lm_longgen.py [--lengths 1024,2048,4096,8192,16384]

A 3-layer LM (width 128, 4 heads; timing does not depend on the weights) with all layers full
vs LongGen (layers 0 and 2 sparse: window 256 + 16 sink tokens + every 16th block of 64 tokens;
layer 1 full). Per length:
- KV memory: keys + values (float32) a decoder must keep after L tokens (a sparse layer keeps
  only what a later query may still see, ``longgen_kept_keys``);
- prefill: one self-attention pass per layer over L tokens, full causal (query slices of 256
  against the keys up to the slice) vs LongGen (query slices of 256 against only the gathered
  keys the pattern allows: sinks, strided blocks, window), same SDPA kernel;
- decode: one new token against a cache of that size, per token, summed over layers.
The FlexAttention kernel of the same masks (tile skipping on CUDA) is tested for equality, not
timed here (no GPU in this run). Writes benchmarks/results/lm_longgen.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from asr.attention import KVCache, MultiHeadAttention
from asr.attention.sparse import LongGenConfig, sparse_self_attention
from lm_common import RESULTS

D, H, LAYERS = 128, 4, 3
CFG = LongGenConfig(window=256, sinks=16, block_size=64, stride=16)


def _time(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, pos="xpos", xpos_scale_base=512.0).eval()
    full_cfg = LongGenConfig(window=CFG.window, full_every=1)  # every layer full (is_full(l) for all l)
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        x = torch.randn(1, n, D)
        kv = {name: sum(c.kv_tokens(l, n) for l in range(LAYERS)) for name, c in (("full", full_cfg), ("longgen", CFG))}
        row = {"length": n, **{f"kv_tokens_{k}": v for k, v in kv.items()},
               **{f"kv_mib_{k}": v * 2 * D * 4 / 2**20 for k, v in kv.items()}}
        rep = 3 if n <= 4096 else 1
        for name, c in (("full", full_cfg), ("longgen", CFG)):
            row[f"prefill_s_{name}"] = sum(
                _time(lambda l=l: sparse_self_attention(mha, x, c, l, query_chunk=256), rep) for l in range(LAYERS))
            step = 0.0
            for l in range(LAYERS):
                kept = c.kv_tokens(l, n)
                cache = KVCache(torch.randn(1, H, kept, D // H), torch.randn(1, H, kept, D // H), n - kept, None)
                step += _time(lambda cache=cache: mha.forward_cached(x[:, :1], cache), 20)
            row[f"decode_ms_{name}"] = step * 1000
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lm_longgen.json").write_text(json.dumps({"config": CFG.__dict__, "rows": rows}, indent=1))
    lines = ["# LongGen hybrid attention: KV memory and time against length (CPU, 1 thread)", "",
             f"3 layers x {D} (4 heads, float32). LongGen: layers 0 and 2 sparse (window {CFG.window}, "
             f"{CFG.sinks} sinks, every {CFG.stride}th block of {CFG.block_size}), layer 1 full. Prefill = "
             "self-attention of L tokens summed over layers (SDPA, query slices of 256; LongGen gathers "
             "only the keys its mask allows). Decode = one token against the KV cache a decoder must keep "
             "(LongGen drops what no later query can see). `python benchmarks/lm_longgen.py`", "",
             "| length | KV full (MiB) | KV LongGen (MiB) | KV saved | prefill full (s) | prefill LongGen (s) | "
             "speedup | decode full (ms/token) | decode LongGen (ms/token) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['kv_mib_full']:.2f} | {r['kv_mib_longgen']:.2f} | "
                     f"{1 - r['kv_mib_longgen'] / r['kv_mib_full']:.0%} | {r['prefill_s_full']:.3f} | "
                     f"{r['prefill_s_longgen']:.3f} | {r['prefill_s_full'] / r['prefill_s_longgen']:.2f}x | "
                     f"{r['decode_ms_full']:.3f} | {r['decode_ms_longgen']:.3f} |")
    (RESULTS / "lm_longgen.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
