#!/usr/bin/env bash
# The external LM of the default model, for shallow fusion in bsbs / offline decoding
# (`asr decode --lm models/default/lm --lm-weight W`): a text-only transformer (conf/lm.yaml) trained
# with `asr train-lm` on CPU, with the tokenizer of models/default.
#
#   egs/default/local/train_lm.sh [--stage N] [--stop-stage M] [--threads T] [--max-steps S] [--model DIR]
#                                 [--config conf/lm.yaml] [--device cpu|cuda] [--out DIR]
#
# conf/lm.yaml is sized for one CPU thread; conf/lm_large.yaml (the shipped LM) trains on the GPU
# lease (device.sh setup) in a few minutes: --config conf/lm_large.yaml --device cuda --out exp/lm_large.
#
# Stages: 0 text: ../shared/text/brown.txt and ljspeech_transcripts.txt, and the transcripts of the
# ASR training sets (speechocean762/train, librispeech-mini/train, an4/train), all read in place and
# normalised as the corpora, into data/lm/train.txt; brown.txt lines with index % 100 == 0 are the
# held-out synthetic test prompts (local/evaluate.sh), so they are left out and become
# data/lm/heldout.txt; any line equal to a dev-test or dev transcript (speechocean762/dev,
# librispeech-mini/dev, an4/test) is dropped too. 1 train: asr train-lm -> exp/lm (resumes). 2 perplexity of exp/lm/lm on the held-out
# prompts and on the dev-test transcripts -> exp/lm/perplexity.json. 3 copy the LM in float16 to
# MODEL/lm when its weights are at most max_mb MB (else it stays in exp/lm/lm).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(cd ../.. && pwd)
shared=${SHARED:-$root/../shared}
model=$root/models/default
threads=1
max_steps=0    # 0: optim.max_steps of conf/lm.yaml
max_mb=8
out=""       # default: $exp/lm
config=conf/lm.yaml
device=cpu
source ../../recipes/stages.sh
parse_options "$@"
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
out=${out:-$exp/lm}
dev_texts="$shared/corpora/speechocean762/dev/text $shared/corpora/librispeech-mini/dev/text $shared/corpora/an4/test/text"
train_texts="$shared/corpora/speechocean762/train/text $shared/corpora/librispeech-mini/train/text $shared/corpora/an4/train/text"

_text() {  # _text OUT_DIR
  mkdir -p "$1"
  # shellcheck disable=SC2086
  "$python" - "$shared/text/brown.txt" "$shared/text/ljspeech_transcripts.txt" "$1" "$train_texts" $dev_texts <<'EOF'
import sys
from asr.text import normalize_text
brown, ljspeech, out, asr_train, dev = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
banned = {normalize_text(line.split(maxsplit=1)[1]) for f in dev for line in open(f) if len(line.split()) > 1}
heldout, train, dropped = [], [], 0
for i, line in enumerate(open(brown, encoding="utf-8").read().splitlines()):
    text = normalize_text(line)
    if i % 100 == 0:  # the held-out synthetic test prompts (local/evaluate.sh, local/make_carry.py)
        heldout += [text] if text else []
    elif text:
        train.append(text)
for f in [ljspeech, *asr_train]:  # "ID WORDS" per line
    for line in open(f, encoding="utf-8"):
        fields = line.split(maxsplit=1)
        if len(fields) == 2 and (text := normalize_text(fields[1])):
            train.append(text)
keep = [t for t in train if t not in banned]
dropped = len(train) - len(keep)
open(f"{out}/train.txt", "w").write("\n".join(keep) + "\n")
open(f"{out}/heldout.txt", "w").write("\n".join(heldout) + "\n")
print(f"lm text: {len(keep)} training lines ({sum(len(t.split()) for t in keep)} words), {len(heldout)} held out, "
      f"{dropped} dropped as equal to a dev transcript", file=sys.stderr)
EOF
}

_perplexity() {  # _perplexity LM_DIR OUT_JSON
  # shellcheck disable=SC2086
  "$python" - "$1" "$2" "$data/lm/heldout.txt" $dev_texts <<'EOF'
import json, math, sys
from asr.models.lm_io import load_lm_dir
from asr.train.lm import perplexity, read_text
lm_dir, out, heldout, dev = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
loaded = load_lm_dir(lm_dir)
sets = {"brown_heldout": read_text([heldout])}
sets.update({"/".join(f.split("/")[-3:-1]): read_text([f], kaldi_ids=True) for f in dev})
result = {}
for name, lines in sets.items():
    seqs = [s for s in (loaded.tokenizer.encode(t) for t in lines) if s]
    r = perplexity(loaded.lm, seqs)
    words = sum(len(t.split()) for t in lines)
    # per word: the same total log-likelihood spread over words (+1 <eos> per line)
    result[name] = {"lines": len(seqs), "tokens": r["tokens"], "ppl_token": round(r["ppl"], 3),
                    "ppl_word": round(math.exp(r["loss"] * r["tokens"] / (words + len(seqs))), 2)}
    print(f"{name}: {result[name]}", file=sys.stderr)
open(out, "w").write(json.dumps(result, indent=2) + "\n")
EOF
}

_half() {  # _half LM_DIR OUT_DIR: the LM directory with float16 weights, if small enough
  "$python" - "$1" "$2" "$max_mb" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
src, dst, max_mb = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
state = torch.load(src / "model.pt", map_location="cpu", weights_only=True)
mb = sum(v.numel() * 2 for v in state.values()) / 2**20
if mb > max_mb:
    sys.exit(f"the LM is {mb:.1f} MB in float16 (> {max_mb} MB): left in {src}")
dst.mkdir(parents=True, exist_ok=True)
torch.save({k: v.half() for k, v in state.items()}, dst / "model.pt")
shutil.copyfile(src / "tokenizer.model", dst / "tokenizer.model")
root = Path.cwd().parents[1]  # provenance paths relative to the repository
text = (src / "config.yaml").read_text().replace(f"{root}/", "")
(dst / "config.yaml").write_text(text)
print(f"wrote {dst} ({(dst / 'model.pt').stat().st_size / 2**20:.1f} MB)", file=sys.stderr)
EOF
}

if in_stages 0; then
  begin_stage 0 "LM text"
  once "$data/lm/.text.done" _text "$data/lm"
fi
if in_stages 1; then
  begin_stage 1 "train the LM ($threads threads)"
  steps=()
  [ "$max_steps" -gt 0 ] && steps=(--max-steps "$max_steps")
  once "$out/.train.done" asr train-lm --config "$config" --tokenizer "$model/tokenizer.model" \
    --out "$out" --device "$device" --threads "$threads" --no-progress "${steps[@]}"
fi
if in_stages 2; then
  begin_stage 2 "perplexity"
  _perplexity "$out/lm" "$out/perplexity.json"
fi
if in_stages 3; then
  begin_stage 3 "float16 LM into $model/lm"
  _half "$out/lm" "$model/lm"
fi
