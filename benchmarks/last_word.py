"""The last word of a clip that stops right after the speech: the streaming result with the old
end-of-stream flush (no pad), with the current one (`streaming.recognizer.FLUSH_PAD_MS` of silence),
and with 1 s of silence appended to the audio (the reference).

Clips are synthesised with flite's slt voice (the default model's training voice) and cut right
after their last sample above 0.01.

    python benchmarks/last_word.py [--model models/default] [--decoder sar]

Writes benchmarks/results/last_word.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import streaming.recognizer as recognizer_module  # noqa: E402
from asr.models.io import default_model_dir, load_model_dir  # noqa: E402
from asr.inference import InferenceConfig  # noqa: E402
from streaming import Recognizer  # noqa: E402

SENTENCES = ["he took the train over london", "she lives in london", "we went to the zoo yesterday",
             "the meeting is over", "please close the window", "my name is john smith"]


def _text(loaded, cfg, wave: np.ndarray, pad_ms: int) -> str:
    saved = recognizer_module.FLUSH_PAD_MS
    recognizer_module.FLUSH_PAD_MS = pad_ms
    try:
        rec = Recognizer(loaded, cfg)
        results = rec.accept_waveform(wave) + rec.finalize()
    finally:
        recognizer_module.FLUSH_PAD_MS = saved
    return " ".join(r.text for r in results if r.is_final and r.text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_model_dir()))
    p.add_argument("--decoder", default="sar")
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "last_word"))
    args = p.parse_args()
    if shutil.which("flite") is None:
        sys.exit("last_word.py needs flite (apt-get install flite) to synthesise the clips")
    torch.set_num_threads(1)
    loaded = load_model_dir(args.model)
    cfg = InferenceConfig(decoder=args.decoder, block_ms=args.block_ms)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sentence in SENTENCES:
            wav = Path(tmp) / "clip.wav"
            subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", str(wav)], check=True)
            x, sr = sf.read(wav, dtype="float32")
            assert sr == 16000
            x = x[: int(np.nonzero(np.abs(x) > 0.01)[0][-1]) + 1]
            silence = np.concatenate([x, np.zeros(16000, np.float32)])
            rows.append({"sentence": sentence, "no_pad": _text(loaded, cfg, x, 0),
                         "flush_pad": _text(loaded, cfg, x, recognizer_module.FLUSH_PAD_MS),
                         "silence_1s": _text(loaded, cfg, silence, recognizer_module.FLUSH_PAD_MS)})
    same_old = sum(r["no_pad"] == r["silence_1s"] for r in rows)
    same_new = sum(r["flush_pad"] == r["silence_1s"] for r in rows)
    lines = ["# last_word", "", f"`python benchmarks/last_word.py --model {args.model} --decoder {args.decoder} "
             f"--block-ms {args.block_ms}`; flush pad {recognizer_module.FLUSH_PAD_MS} ms", "",
             "| clip (flite slt, cut after the speech) | old flush (no pad) | flush pad | + 1 s silence |", "|---|---|---|---|",
             *[f"| {r['sentence']} | {r['no_pad']} | {r['flush_pad']} | {r['silence_1s']} |" for r in rows], "",
             f"Same text as with 1 s of silence: old flush {same_old}/{len(rows)}, flush pad {same_new}/{len(rows)}.", ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
