"""Length extrapolation of small LMs: XPos vs RoPE vs no positions (Sun et al., 2022).

    python benchmarks/lm_xpos.py [--steps 480]

Trains three LMs (``pos: xpos | rope | none``, 0.46 M parameters) for ``--steps`` steps each
(the same batches) on random 64-token windows of the brown text (CPU, 1 thread) and measures
held-out perplexity on windows of 1x, 4x, 8x and 16x the training length, with plain causal
attention and with the paper's blockwise causal attention (BCA, blocks of half the training
length). The trained LMs
are kept in /tmp/blockasr_lm_bench for lm_paged.py and lm_star.py.
Writes benchmarks/results/lm_xpos.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json

import torch

from asr.config import load_yaml
from asr.models.lm_io import LMDirConfig
from lm_common import LM_CACHE, RESULTS, TEXT, TRAIN_LEN, cached_lm, stream_ppl, streams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=480, help="training steps per LM (when not cached)")
    p.add_argument("--eval-tokens", type=int, default=16384, help="held-out targets per length")
    args = p.parse_args()
    torch.set_num_threads(1)
    train_ids, held = streams()
    vocab = 256
    mults = [1, 4, 8, 16]
    rows, train_s = [], []
    for pos in ("xpos", "rope", "none"):
        lm = cached_lm(pos, train_ids, args.steps, vocab)
        prov = load_yaml(LMDirConfig, LM_CACHE / pos / "config.yaml").provenance
        train_s.append(f"{pos} {prov['seconds']:.0f} s, final train loss {prov['train_loss']:.3f}")
        for bca in (False, True):
            if pos == "none" and bca:
                continue
            ppl = [stream_ppl(lm, held, m * TRAIN_LEN, args.eval_tokens, TRAIN_LEN // 2 if bca else None)
                   for m in mults]
            rows.append({"pos": pos, "attention": "blockwise causal" if bca else "causal",
                         "ppl": [round(x, 3) for x in ppl], "ratio_8x": round(ppl[2] / ppl[0], 3)})
            print(rows[-1])
    RESULTS.mkdir(exist_ok=True)
    train_s = "; ".join(train_s)
    info = {"training": train_s, "text": str(TEXT), "train_len": TRAIN_LEN, "lengths": [m * TRAIN_LEN for m in mults],
            "held_out_tokens": len(held), "lm_dirs": str(LM_CACHE), "rows": rows}
    (RESULTS / "lm_xpos.json").write_text(json.dumps(info, indent=1))
    head = "| positions | attention | " + " | ".join(f"{m}x ({m * TRAIN_LEN})" for m in mults) + " | 8x / 1x |"
    lines = ["# LM length extrapolation: XPos vs RoPE vs none", "",
             f"Training windows of {TRAIN_LEN} tokens (brown text, first 90 % of lines; the last 10 % held "
             f"out), 2 layers x 128, {args.steps} AdamW steps of 32 windows each (the same batches for "
             f"every LM; CPU, 1 thread: {train_s}) "
             "(`python benchmarks/lm_xpos.py`). Held-out perplexity per token (256-piece tokenizer), "
             "every position of each window scored. Blockwise causal = the XPos paper's inference mask "
             f"(blocks of {TRAIN_LEN // 2}, a query sees its own and the previous block).", "",
             head, "|" + "---|" * (len(mults) + 3)]
    for r in rows:
        lines.append(f"| {r['pos']} | {r['attention']} | " + " | ".join(f"{x:.2f}" for x in r["ppl"])
                     + f" | {r['ratio_8x']:.3f} |")
    lines += ["", "![perplexity against length](lm_xpos.png)", ""]
    (RESULTS / "lm_xpos.md").write_text("\n".join(lines))
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.plot(info["lengths"], r["ppl"], marker="o", linestyle="-" if r["attention"] == "causal" else "--",
                label=f"{r['pos']} ({r['attention']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axvline(TRAIN_LEN, color="grey", linewidth=0.8)
    ax.set_xlabel("evaluation length (tokens); training length 64")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "lm_xpos.png", dpi=120)


if __name__ == "__main__":
    main()
