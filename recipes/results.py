"""Collect decode results and stage times into a RESULTS.md (the last stage of every recipe).

Decode directories follow ``<exp>/<model>/decode/<decoder>-<block>/<test set>/`` (as
``recipes/stages.sh`` names them) and hold the ``summary.json`` written by ``asr decode``:
``{"wer": <percent>, "rtf": ..., "latency_ms_p50": ..., "latency_ms_p90": ..., "utterances": ...}``
(further keys are kept but not shown). One table row per (model, decoder, block, test set); a
number a summary lacks shows as ``-``.

``<exp>/timing.tsv``, appended by ``recipes/stages.sh`` (``stage<TAB>step<TAB>wall seconds<TAB>CPU
seconds`` for every step it ran; the CPU column is optional), adds a table of wall-clock and CPU time
per stage; for a step run more than once the last time counts.

    python -m recipes.results --exp exp --out RESULTS.md --title "LibriSpeech-100"
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["SUMMARY", "TIMING", "STAGE_NAMES", "collect_results", "collect_timing", "format_results",
           "format_timing", "format_table", "main"]

SUMMARY = "summary.json"
TIMING = "timing.tsv"
STAGE_NAMES = {0: "prepare", 1: "tokenizer", 2: "cmvn", 3: "train", 4: "average + export", 5: "decode",
               6: "results"}
_COLUMNS = (("WER (%)", "wer", "{:.2f}"), ("RTF", "rtf", "{:.3f}"), ("latency p50 (ms)", "latency_ms_p50", "{:.0f}"),
            ("latency p90 (ms)", "latency_ms_p90", "{:.0f}"), ("utterances", "utterances", "{:d}"))


def _block_key(block: str) -> tuple[int, int]:
    return (1, 0) if block == "full" else (0, int(block)) if block.isdigit() else (2, 0)


def collect_results(exp: str | Path) -> dict[tuple[str, str, str, str], dict]:
    """``(model, decoder, block, test set) -> summary.json contents`` for every decode dir under ``exp``.

    Raises:
        ValueError: a ``summary.json`` is not valid JSON or has no numeric ``wer``; the message names
            the file.
    """
    results: dict[tuple[str, str, str, str], dict] = {}
    for path in sorted(Path(exp).glob(f"*/decode/*/*/{SUMMARY}")):
        test_set, setting, model = path.parent.name, path.parent.parent.name, path.parents[3].name
        decoder, _, block = setting.rpartition("-")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("wer"), (int, float)):
            raise ValueError(f"{path}: expected an object with a numeric 'wer' (percent)")
        results[(model, decoder or setting, block, test_set)] = data
    return results


def collect_timing(exp: str | Path) -> dict[int, tuple[float, float | None]]:
    """``stage -> (wall seconds, CPU seconds or None)`` summed over its steps in ``<exp>/timing.tsv``
    (empty if absent). CPU is None when a step of the stage has no CPU column.

    Raises:
        ValueError: a line is not ``stage<TAB>step<TAB>wall[<TAB>cpu]``; the message names the file
            and line.
    """
    path = Path(exp) / TIMING
    if not path.is_file():
        return {}
    last: dict[str, tuple[int, float, float | None]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            if len(parts) not in (3, 4):
                raise ValueError
            cpu = float(parts[3]) if len(parts) == 4 else None
            last[parts[1]] = (int(parts[0]), float(parts[2]), cpu)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'stage<TAB>step<TAB>wall seconds[<TAB>CPU seconds]', "
                             f"got {line!r}") from None
    per_stage: dict[int, tuple[float, float | None]] = {}
    for stage, wall, cpu in last.values():
        w, c = per_stage.get(stage, (0.0, 0.0))
        per_stage[stage] = (w + wall, None if c is None or cpu is None else c + cpu)
    return dict(sorted(per_stage.items()))


def _cell(summary: dict, key: str, fmt: str) -> str:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return fmt.format(int(value) if fmt == "{:d}" else value)


def format_results(results: dict[tuple[str, str, str, str], dict]) -> list[str]:
    """Markdown lines: one row per (model, decoder, block, test set), sorted."""
    if not results:
        return ["No decode results yet."]
    lines = ["| model | decoder | block (ms) | test set | " + " | ".join(c[0] for c in _COLUMNS) + " |",
             "|---|---|---|---|" + "---:|" * len(_COLUMNS)]
    for key in sorted(results, key=lambda k: (k[0], k[1], _block_key(k[2]), k[3])):
        cells = [_cell(results[key], name, fmt) for _, name, fmt in _COLUMNS]
        lines.append("| " + " | ".join(key) + " | " + " | ".join(cells) + " |")
    return lines


def format_timing(timing: dict[int, tuple[float, float | None]]) -> list[str]:
    """Markdown lines: wall-clock and CPU minutes per stage and in total, and the cores used (CPU / wall)."""
    def row(name: str, wall: float, cpu: float | None, bold: bool = False) -> str:
        cells = [f"{wall / 60:.1f}", "-" if cpu is None else f"{cpu / 60:.1f}",
                 "-" if cpu is None or wall <= 0 else f"{cpu / wall:.2f}"]
        if bold:
            name, cells = f"**{name}**", [f"**{c}**" for c in cells]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines = ["| stage | wall clock (min) | CPU (min) | cores used |", "|---|---:|---:|---:|"]
    for stage, (wall, cpu) in timing.items():
        lines.append(row(f"{stage} {STAGE_NAMES.get(stage, '')}".strip(), wall, cpu))
    cpus = [cpu for _, cpu in timing.values()]
    total_cpu = None if any(c is None for c in cpus) else sum(cpus)
    lines.append(row("total", sum(w for w, _ in timing.values()), total_cpu, bold=True))
    return lines


def format_table(results: dict[tuple[str, str, str, str], dict], title: str = "Results",
                 timing: dict[int, tuple[float, float | None]] | None = None) -> str:
    """The whole RESULTS.md: the decode table, then the stage times when there are any."""
    lines = [f"# {title}", "",
             "`asr decode` per model, decoder and block size (`--block-ms`; `full` = whole utterance, "
             "offline decoder): word error rate, real-time factor (compute / audio) and final-result "
             "latency (compute after the last 100 ms chunk).", ""]
    lines += format_results(results)
    if timing:
        lines += ["", "## Stage times", "", "The steps each stage ran (recipes/stages.sh): wall clock, CPU time "
                  "(user + system) and CPU / wall, the cores the stage had on average.", ""]
        lines += format_timing(timing)
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True, help="experiment folder (holds <model>/decode/... and timing.tsv)")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--title", default="Results")
    args = parser.parse_args(argv)
    try:
        table = format_table(collect_results(args.exp), args.title, collect_timing(args.exp))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(args.out).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
