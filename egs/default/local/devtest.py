"""Write the dev-test manifests of the default model (``splits.DEVTEST``), read in place from
``shared/corpora``: speechocean762 dev-test (21 of its 62 dev speakers), librispeech-mini dev and
an4 test. None of them is ever trained on.

    python egs/default/local/devtest.py --corpora ../shared/corpora --out egs/default/data/devtest
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr.data.kaldi import read_kaldi_dir  # noqa: E402
from asr.data.manifest import write_manifest  # noqa: E402
from splits import DEVTEST, devtest_speakers, read_kaldi  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", required=True, help="the shared/corpora folder")
    p.add_argument("--out", required=True, help="folder for <name>.jsonl")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, corpus, split in DEVTEST:
        src = Path(args.corpora) / corpus / split
        _, _, spk = read_kaldi(src)
        keep = devtest_speakers(corpus, split, spk)
        report = read_kaldi_dir(src, workers=2, progress=False)
        for utt, message in report.errors:
            print(f"error: {utt}: {message}", file=sys.stderr)
        rows = [r for r in report.rows if r["speaker"] in keep]
        write_manifest(out / f"{name}.jsonl", rows)
        hours = sum(r["duration"] for r in rows) / 3600
        print(f"{name}: {len(rows)} utterances, {len(keep)} speakers, {hours:.2f} h", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
