"""Shallow fusion of an external LM, ablated: bsbs and offline decoding (640 ms blocks) with and
without ``--lm`` at a few weights, on the dev-test sets, with ``asr decode``.

    python benchmarks/lm_fusion.py --lm models/default/lm [--model models/default]
        [--sets speechocean762_devtest librispeech_dev] [--max-utts 100] [--weights 0.2 0.4]
        [--decoders bsbs offline] [--threads 1] [--ppl egs/default/exp/lm/perplexity.json]

``NAME:N`` in ``--sets`` takes the first N utterances of that set (default ``--max-utts``). Each row
runs ``asr decode`` in a subprocess (outputs in benchmarks/results/lm_fusion/<set>/<tag>/); the table
goes to benchmarks/results/lm_fusion.{md,json}, with the LM's perplexities (``--ppl``, written by
egs/default/local/train_lm.sh) when given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _decode(data: Path, n: int, tag: str, args: argparse.Namespace, extra: list[str]) -> dict | None:
    out = RESULTS / "lm_fusion" / data.stem / tag
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text())["utterances"] == n and not args.redo:
        return json.loads(summary.read_text())  # done already (a re-run continues)
    if args.no_decode:
        return None
    cmd = [sys.executable, "-m", "blockasr", "decode", "--model", args.model, "--data", str(data),
           "--out", str(out), "--threads", str(args.threads), "--max-utts", str(n), "--quiet", *extra]
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{tag} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _lm_summary(lm_dir: Path) -> str:
    """One line on the LM directory: sizes, parameters, weights on disk, training steps."""
    import yaml

    cfg_path = lm_dir / "config.yaml"
    if not cfg_path.is_file():
        return ""
    cfg = yaml.safe_load(cfg_path.read_text())
    lm, prov = cfg.get("lm", {}), cfg.get("provenance", {})
    mb = (lm_dir / "model.pt").stat().st_size / 2**20
    return (f"LM `{lm_dir}`: {lm.get('n_layers')} layers x d {lm.get('d_model')} (ff x{lm.get('ff_mult')}), "
            f"vocabulary {cfg.get('vocab_size')}, {mb:.1f} MB on disk; trained {prov.get('steps')} steps "
            f"({prov.get('epochs')} full epochs), held-out perplexity {prov.get('valid_ppl')} per token.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", required=True, help="LM directory (asr train-lm)")
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--data", default=str(ROOT / "egs" / "default" / "data" / "devtest"), help="folder of <set>.jsonl")
    p.add_argument("--sets", nargs="+", default=["speechocean762_devtest", "librispeech_dev"])
    p.add_argument("--max-utts", type=int, default=100)
    p.add_argument("--weights", type=float, nargs="*", default=[0.2, 0.4], help="LM weights besides 0 (none: baselines only)")
    p.add_argument("--decoders", nargs="+", default=["bsbs", "offline"])
    p.add_argument("--block-ms", default="640")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ppl", default=None, help="perplexity.json of the LM (local/train_lm.sh stage 2)")
    p.add_argument("--redo", action="store_true", help="decode again even where a summary exists")
    p.add_argument("--no-decode", action="store_true", help="table of the decodes done already; the rest left out")
    p.add_argument("--note", default=None, help="a paragraph appended to the table (how the LM was trained)")
    p.add_argument("--lm-only", action="store_true",
                   help="decode the LM rows only (no table; a later run without it reuses every decode)")
    args = p.parse_args()

    rows = []
    for spec in args.sets:
        name, _, n = spec.partition(":")
        data = Path(args.data) / f"{name}.jsonl"
        n = int(n) if n else args.max_utts
        for dec in args.decoders:
            base = ["--decoder", dec, "--block-ms", args.block_ms]
            for w in ([] if args.lm_only else [0.0]) + args.weights:
                extra = base + (["--lm", args.lm, "--lm-weight", str(w)] if w else ["--lm", "none"])
                r = _decode(data, n, f"{dec}_{args.block_ms}_lm{w:g}", args, extra)
                if r is None:
                    continue
                rows.append({"set": name, "decoder": dec, "lm_weight": w, **{k: r[k] for k in (
                    "wer", "substitutions", "deletions", "insertions", "rtf", "latency_ms_p50", "latency_ms_p90",
                    "utterances", "audio_seconds")}})
    if args.lm_only:
        return 0
    lines = [f"# Shallow fusion of `{args.lm}` into `{Path(args.model).name}`", "",
             f"`asr decode`, {args.block_ms} ms blocks, beam 10, CTC weight 0.3, {args.threads} CPU thread(s) on a "
             "shared, loaded machine (RTF and latency are only comparable within this table). "
             "LM weight 0 = no LM. Relative = WER change against no LM.", "",
             "| set (utterances) | decoder | LM weight | WER % | relative | sub / del / ins | RTF | latency p50 / p90 (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["set"], r["decoder"]): r["wer"] for r in rows if r["lm_weight"] == 0}
    for r in rows:
        b = base.get((r["set"], r["decoder"]))
        rel = f"{100 * (r['wer'] - b) / b:+.1f} %" if r["lm_weight"] and b else "-"
        lines.append(f"| {r['set']} ({r['utterances']}) | {r['decoder']} | {r['lm_weight']:g} | {r['wer']:.2f} | {rel} | "
                     f"{r['substitutions']} / {r['deletions']} / {r['insertions']} | {r['rtf']:.3f} | "
                     f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p90']:.0f} |")
    ppl = json.loads(Path(args.ppl).read_text()) if args.ppl else None
    if ppl:
        lines += ["", "LM perplexity (per token of the model's tokenizer, `<eos>` included; per word: the same "
                  "log-likelihood over words + one `<eos>` per line):", "",
                  "| text | lines | tokens | perplexity / token | perplexity / word |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['lines']} | {v['tokens']} | {v['ppl_token']} | {v['ppl_word']} |" for k, v in ppl.items()]
    lm_cfg = _lm_summary(Path(args.lm))
    if lm_cfg:
        lines += ["", lm_cfg]
    if args.note:
        lines += ["", args.note]
    table = "\n".join(lines)
    print(table)
    (RESULTS / "lm_fusion.md").write_text(table + "\n")
    (RESULTS / "lm_fusion.json").write_text(json.dumps({"lm": args.lm, "model": args.model, "rows": rows,
                                                        "perplexity": ppl}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
