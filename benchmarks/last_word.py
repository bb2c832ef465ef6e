"""The last word of a clip that stops right after the speech: the streaming result with no
end-of-stream pad, with the earlier pad (400 ms of a faint -50 dBFS noise), with the current flush
(`streaming.recognizer.flush_pad`: digital silence to a block boundary at least FLUSH_PAD_MS past
the audio), and with 1 s of digital silence appended to the audio (the reference; its stream ends
with the current flush too).

Clips are synthesised with flite's slt voice (the default model's training voice) and cut right
after their last sample above 0.01.

    python benchmarks/last_word.py [--model models/default] [--decoder sar ctc bsbs] [--block-ms 640]

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


def _no_pad(*args) -> torch.Tensor:
    return torch.zeros(0)


def _noise_pad(*args) -> torch.Tensor:
    """The pad before issue 19's fix: 400 ms of a fixed faint noise, whatever the block."""
    return 0.003 * torch.randn(6400, generator=torch.Generator().manual_seed(0))


def _text(loaded, cfg, wave: np.ndarray, pad=None) -> str:
    """The stream's final text, its end flushed with ``pad`` (None: the recognizer's own flush)."""
    saved = recognizer_module.flush_pad
    recognizer_module.flush_pad = pad or saved
    try:
        rec = Recognizer(loaded, cfg)
        results = rec.accept_waveform(wave) + rec.finalize()
    finally:
        recognizer_module.flush_pad = saved
    return " ".join(r.text for r in results if r.is_final and r.text)


def _clips(tmp: Path) -> list[tuple[str, np.ndarray]]:
    """The flite clips, each cut right after its last sample above 0.01."""
    clips = []
    for sentence in SENTENCES:
        wav = tmp / "clip.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", str(wav)], check=True)
        x, sr = sf.read(wav, dtype="float32")
        assert sr == 16000
        clips.append((sentence, x[: int(np.nonzero(np.abs(x) > 0.01)[0][-1]) + 1]))
    return clips


def _table(decoder: str, rows: list[dict]) -> list[str]:
    same = {k: sum(r[k] == r["silence_1s"] for r in rows) for k in ("no_pad", "noise_pad_400ms", "flush_pad")}
    return [f"## {decoder}", "",
            "| clip (flite slt, cut after the speech) | no pad | 400 ms noise pad (before) | flush | + 1 s silence |",
            "|---|---|---|---|---|",
            *[f"| {r['sentence']} | {r['no_pad']} | {r['noise_pad_400ms']} | {r['flush_pad']} | {r['silence_1s']} |"
              for r in rows], "",
            f"Same text as with 1 s of silence ({decoder}): no pad {same['no_pad']}/{len(rows)}, 400 ms noise pad "
            f"{same['noise_pad_400ms']}/{len(rows)}, flush {same['flush_pad']}/{len(rows)}.", ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(default_model_dir()))
    p.add_argument("--decoder", nargs="+", default=["sar", "ctc", "bsbs"])
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "last_word"))
    args = p.parse_args()
    if shutil.which("flite") is None:
        sys.exit("last_word.py needs flite (apt-get install flite) to synthesise the clips")
    torch.set_num_threads(1)
    loaded = load_model_dir(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        clips = _clips(Path(tmp))
    results: dict[str, list[dict]] = {}
    lines = ["# last_word", "", f"`python benchmarks/last_word.py --model {args.model} --decoder "
             f"{' '.join(args.decoder)} --block-ms {args.block_ms}`; flush: digital silence to a block boundary "
             f"at least {recognizer_module.FLUSH_PAD_MS} ms past the audio (`streaming.recognizer.flush_pad`)", ""]
    for decoder in args.decoder:
        cfg = InferenceConfig(decoder=decoder, block_ms=args.block_ms)
        rows = []
        for sentence, x in clips:
            silence = np.concatenate([x, np.zeros(16000, np.float32)])
            rows.append({"sentence": sentence, "no_pad": _text(loaded, cfg, x, _no_pad),
                         "noise_pad_400ms": _text(loaded, cfg, x, _noise_pad),
                         "flush_pad": _text(loaded, cfg, x),
                         "silence_1s": _text(loaded, cfg, silence)})
        results[decoder] = rows
        lines += _table(decoder, rows)
    text = "\n".join(lines)
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({"block_ms": args.block_ms, "decoders": results}, indent=1))


if __name__ == "__main__":
    main()
