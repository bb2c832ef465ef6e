"""Long-form WER with and without cross-segment LM context (shallow fusion, offline joint search).

    python benchmarks/lm_session_wer.py [--per-chapter 10] [--lm /tmp/blockasr_lm_bench/xpos]

Sessions = consecutive utterances of one librispeech-mini dev chapter (ids speaker-chapter-index,
read in place from ../shared/corpora), each utterance one segment. Every utterance is encoded
once (models/default, full context) and searched three ways: no LM; LM per segment (today's
``--lm``); LM with session context (:class:`asr.models.lm_session.SessionLM`: the finals of
the earlier segments, up to ``--context`` tokens, PagedEviction). The LM is an lm_xpos.py LM
(brown text, the model's tokenizer). Writes benchmarks/results/lm_session_wer.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from asr.audio import load_audio
from asr.data.kaldi import read_kaldi_dir
from asr.decode.bsbs import joint_scorers
from asr.features import Fbank
from asr.models.io import load_model_dir
from asr.models.lm_io import load_lm_dir
from asr.models.lm_session import SessionContextConfig, SessionLM
from asr.search import BeamSearch, BeamSearchConfig
from asr.search.scorer import Memory
from lm_common import LM_CACHE, RESULTS, ROOT, SHARED

CORPUS = SHARED / "corpora" / "librispeech-mini" / "dev"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-chapter", type=int, default=10, help="first N utterances of each chapter")
    p.add_argument("--lm", default=str(LM_CACHE / "xpos"))
    p.add_argument("--lm-weight", type=float, default=0.3)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--context", type=int, default=64, help="session context budget in tokens (64: the best held-out perplexity in lm_paged.py)")
    args = p.parse_args()
    import jiwer

    torch.set_num_threads(1)
    loaded = load_model_dir(ROOT / "models" / "default")
    model = loaded.model.eval()
    if not Path(args.lm, "model.pt").is_file():
        raise SystemExit(f"no LM at {args.lm}: run benchmarks/lm_xpos.py first")
    lm = load_lm_dir(args.lm, tokenizer=loaded.tokenizer).lm
    chapters = defaultdict(list)
    for r in read_kaldi_dir(CORPUS, progress=False).rows:
        chapters["-".join(r["id"].split("-")[:3])].append(r)
    fbank = Fbank(loaded.features)
    hyps = {"no LM": [], "LM per segment": [], "LM + session context": []}
    refs, peak_kv, t0, seconds = [], 0, time.perf_counter(), 0.0
    for chapter, rows in sorted(chapters.items()):
        session = SessionLM(lm, SessionContextConfig(max_tokens=args.context))
        for row in sorted(rows, key=lambda r: r["id"])[: args.per_chapter]:
            wave = load_audio(row["audio"], row.get("start"), row.get("end"))
            seconds += wave.numel() / 16000
            with torch.no_grad():
                feats, _ = fbank(wave[None], torch.tensor([wave.numel()]))
                enc, lens = model.encode(feats, torch.tensor([feats.shape[1]]))
                enc = enc[0, : int(lens[0])]
                mem = Memory(enc=enc, ctc_logp=model.ctc_logp(enc))
                for name, scorer in (("no LM", None), ("LM per segment", lm), ("LM + session context", session.scorer())):
                    scorers, weights = joint_scorers(model, 0.3, scorer, args.lm_weight if scorer is not None else 0.0)
                    nbest = BeamSearch(scorers, weights, BeamSearchConfig(beam_size=args.beam))(mem)
                    ids = nbest[0].tokens if nbest else []
                    hyps[name].append(loaded.tokenizer.decode(ids))
                    if name == "LM + session context":
                        session.commit(ids)  # the final becomes context for the next segment
            peak_kv = max(peak_kv, session.nbytes)
            refs.append(row["text"])
            print(f"{row['id']}: {hyps['LM + session context'][-1]}", flush=True)
    wer = {name: jiwer.wer(refs, h) for name, h in hyps.items()}
    info = {"utterances": len(refs), "audio_s": round(seconds, 1), "chapters": len(chapters),
            "lm": args.lm, "lm_weight": args.lm_weight, "beam": args.beam, "context_tokens": args.context,
            "wer": wer, "peak_session_kv_kib": peak_kv / 1024, "wall_s": round(time.perf_counter() - t0, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lm_session_wer.json").write_text(json.dumps(info, indent=1))
    lines = ["# Long-form WER with and without cross-segment LM context", "",
             f"librispeech-mini dev, first {args.per_chapter} utterances of each of {len(chapters)} chapters "
             f"({len(refs)} segments, {seconds / 60:.1f} min of audio); models/default, full-context offline "
             f"joint CTC/attention search, beam {args.beam}, CTC weight 0.3; LM `{Path(args.lm).name}` of "
             f"lm_xpos.py, weight {args.lm_weight}; session context up to {args.context} tokens "
             "(pages of 16, PagedEviction). `python benchmarks/lm_session_wer.py`", "",
             "| decoding | WER |", "|---|---|"]
    lines += [f"| {name} | {100 * w:.2f} % |" for name, w in wer.items()]
    lines += ["", f"Peak session KV memory: {peak_kv / 1024:.1f} KiB (bounded by the budget)."]
    (RESULTS / "lm_session_wer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
