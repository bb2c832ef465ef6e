"""Collect decode results into a RESULTS.md table (the last stage of every recipe).

Decode directories follow ``<exp>/<model>/decode/<decoder>-<block>/<test set>/`` (as
``recipes/stages.sh`` names them) and hold ``wer.json`` written by ``asr decode``:
``{"wer": <percent>, ...}`` with optional ``"rtf"`` (real-time factor) and ``"latency_ms"``.
One row per (model, decoder, block), one WER column per test set; a missing result shows as ``-``.

    python -m recipes.results --exp exp --out RESULTS.md --title "LibriSpeech-100"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["collect_results", "format_table", "main"]


def _block_key(block: str) -> tuple[int, int]:
    return (1, 0) if block == "full" else (0, int(block)) if block.isdigit() else (2, 0)


def collect_results(exp: str | Path) -> dict[tuple[str, str, str], dict[str, dict]]:
    """``(model, decoder, block) -> {test set: wer.json contents}`` for every decode dir under ``exp``.

    Raises:
        ValueError: a ``wer.json`` is not valid JSON or lacks ``wer``; the message names the file.
    """
    results: dict[tuple[str, str, str], dict[str, dict]] = {}
    for path in sorted(Path(exp).glob("*/decode/*/*/wer.json")):
        test_set, setting, model = path.parent.name, path.parent.parent.name, path.parents[3].name
        decoder, _, block = setting.rpartition("-")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("wer"), (int, float)):
            raise ValueError(f"{path}: expected an object with a numeric 'wer' (percent)")
        results.setdefault((model, decoder or setting, block), {})[test_set] = data
    return results


def format_table(results: dict[tuple[str, str, str], dict[str, dict]], title: str = "Results") -> str:
    """Markdown: a WER (%) table, rows sorted by model, decoder, block size."""
    test_sets = sorted({t for per_set in results.values() for t in per_set})
    lines = [f"# {title}", "", "WER (%) by model, decoder and block size "
             "(`asr decode --block-ms`; `full` = whole utterance).", ""]
    if not results:
        return "\n".join(lines + ["No decode results yet.", ""])
    lines.append("| model | decoder | block (ms) | " + " | ".join(test_sets) + " |")
    lines.append("|---|---|---|" + "---|" * len(test_sets))
    for model, decoder, block in sorted(results, key=lambda k: (k[0], k[1], _block_key(k[2]))):
        per_set = results[(model, decoder, block)]
        cells = [f"{per_set[t]['wer']:.2f}" if t in per_set else "-" for t in test_sets]
        lines.append(f"| {model} | {decoder} | {block} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True, help="experiment folder (holds <model>/decode/...)")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--title", default="Results")
    args = parser.parse_args(argv)
    try:
        table = format_table(collect_results(args.exp), args.title)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(args.out).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
