"""Markdown table of the ``summary.json`` files that ``asr decode`` wrote under an evaluation folder
(``<dir>/<decoder>-<block>-g<g>/<set>/summary.json``, as ``local/evaluate.sh`` names them).

    python egs/default/local/results_table.py egs/default/exp/eval
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1])
    rows = []
    for path in sorted(root.glob("*/*/summary.json")):
        s = json.loads(path.read_text())
        rows.append((path.parent.parent.name, path.parent.name, s))
    sets = sorted({name for _, name, _ in rows})
    print("| decoder | block (ms) | g | " + " | ".join(f"{t} WER % | RTF | latency p50 / p90 (ms)" for t in sets) + " |")
    print("|---|---|---|" + "---|---|---|" * len(sets))
    settings = sorted({setting for setting, _, _ in rows}, key=lambda k: [s for s in rows if s[0] == k][0][2]["decoder"])
    for setting in settings:
        first = next(s for k, _, s in rows if k == setting)
        g = first["tentative_frames"] if first["decoder"] == "sar" else "-"
        cells = []
        for t in sets:
            s = next((s for k, n, s in rows if k == setting and n == t), None)
            cells += ["-", "-", "-"] if s is None else [
                f"{s['wer']:.2f} ({s['utterances']} utts)", f"{s['rtf']:.3f}",
                f"{s['latency_ms_p50']:.0f} / {s['latency_ms_p90']:.0f}"]
        print(f"| {first['decoder']} | {first['block_ms']} | {g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
