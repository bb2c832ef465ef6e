"""The decoders side by side on one model and one test set (the paper's table): WER, RTF on CPU and
final-result latency for streaming CTC, SAR with g = 0 (naive), SAR, BSBS and offline decoding,
plus WER against block size for the streaming decoders (a plot).

    python benchmarks/decoders.py [--model models/default] [--data ../shared/corpora/speechocean762/dev]
                                  [--max-utts 300] [--threads 2] [--blocks 320 640 1280]

Each row runs ``asr decode`` in a subprocess; outputs go to benchmarks/results/decoders/<tag>/ and
the table to benchmarks/results/decoders_<data>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _decode(tag: str, args: argparse.Namespace, extra: list[str]) -> dict:
    out = RESULTS / "decoders" / f"{Path(args.data).name}" / tag
    cmd = [sys.executable, "-m", "blockasr", "decode", "--model", args.model, "--data", args.data,
           "--out", str(out), "--threads", str(args.threads), "--quiet", "--lm", "none", *extra]  # the model alone
    if args.max_utts:
        cmd += ["--max-utts", str(args.max_utts)]
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tag} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "corpora" / "speechocean762" / "dev"))
    p.add_argument("--max-utts", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block-ms", default="640", help="block of the main table (default 640)")
    p.add_argument("--blocks", nargs="*", default=["320", "640", "1280"], help="block sweep for the plot")
    p.add_argument("--beam", default="10")
    args = p.parse_args()

    b = args.block_ms
    rows = [
        ("streaming CTC", "ctc", ["--decoder", "ctc", "--block-ms", b]),
        ("SAR g=0 (naive)", "sar_g0", ["--decoder", "sar", "--block-ms", b, "--tentative-frames", "0"]),
        ("SAR g=2", "sar_g2", ["--decoder", "sar", "--block-ms", b, "--tentative-frames", "2"]),
        ("BSBS", "bsbs", ["--decoder", "bsbs", "--block-ms", b, "--beam", args.beam]),
        ("offline (full context)", "offline", ["--decoder", "offline", "--block-ms", "full", "--beam", args.beam]),
    ]
    table = []
    for name, tag, extra in rows:
        r = _decode(f"{tag}_{b}" if tag != "offline" else tag, args, extra)
        table.append({"decoder": name, **{k: r[k] for k in ("wer", "rtf", "latency_ms_p50", "latency_ms_p90",
                                                           "utterances", "audio_seconds")}})
    sweep = {}
    for dec, extra in (("ctc", []), ("sar", ["--tentative-frames", "2"])):
        for blk in args.blocks:
            r = _decode(f"{dec}_{blk}", args, ["--decoder", dec, "--block-ms", blk, *extra])
            sweep.setdefault(dec, []).append((int(blk), r["wer"], r["latency_ms_p50"]))

    by = {row["decoder"]: row for row in table}
    ctc, sar, bsbs, off = (by["streaming CTC"], by["SAR g=2"], by["BSBS"], by["offline (full context)"])
    checks = {
        "SAR >= 10% relative WER below streaming CTC": sar["wer"] <= 0.9 * ctc["wer"],
        "BSBS within 10% relative of offline": bsbs["wer"] <= 1.1 * off["wer"],
        "SAR final latency <= 0.4 x BSBS": sar["latency_ms_p50"] <= 0.4 * bsbs["latency_ms_p50"],
    }
    data_name = Path(args.data).name if Path(args.data).name not in ("dev", "train", "all") else \
        "_".join(Path(args.data).parts[-2:])
    lines = [f"Model `{Path(args.model).name}`, data `{args.data}` ({table[0]['utterances']} utterances, "
             f"{table[0]['audio_seconds']} s), block {b} ms, {args.threads} CPU threads, beam {args.beam}.", "",
             "| decoder | WER % | RTF | final latency p50 (ms) | p90 (ms) |", "|---|---|---|---|---|"]
    lines += [f"| {r['decoder']} | {r['wer']} | {r['rtf']} | {r['latency_ms_p50']} | {r['latency_ms_p90']} |"
              for r in table]
    lines += ["", "| target | met |", "|---|---|"] + [f"| {k} | {'yes' if v else 'no'} |" for k, v in checks.items()]
    lines += ["", "WER against block size (streaming decoders):", "", "| decoder | " +
              " | ".join(f"{blk} ms" for blk in args.blocks) + " |", "|---|" + "---|" * len(args.blocks)]
    lines += [f"| {d} | " + " | ".join(str(w) for _, w, _ in pts) + " |" for d, pts in sweep.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"decoders_{data_name}.md").write_text(text)
    (RESULTS / f"decoders_{data_name}.json").write_text(json.dumps(
        {"table": table, "sweep": sweep, "checks": checks, "model": args.model, "data": args.data}, indent=2))
    _plot(sweep, table, RESULTS / f"decoders_{data_name}.png")


def _plot(sweep: dict, table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dec, pts in sweep.items():
        # latency a user sees: waiting for the block to fill (on average half a block beyond the
        # word) plus the compute after the last sample
        ax.plot([blk / 2 + lat for blk, _, lat in pts], [w for _, w, _ in pts], "o-", label=dec)
        for blk, w, lat in pts:
            ax.annotate(f"{blk} ms", (blk / 2 + lat, w), fontsize=7)
    for row in table:
        if row["decoder"] in ("BSBS", "offline (full context)"):
            ax.axhline(row["wer"], ls="--", lw=0.8, label=row["decoder"], color="gray" if "off" in row["decoder"] else "C3")
    ax.set(xlabel="latency: block/2 + final compute (ms)", ylabel="WER %", title="WER vs latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
