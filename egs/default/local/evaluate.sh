#!/usr/bin/env bash
# Score a model directory on CPU with `asr decode` on the dev-test sets (local/splits.py: never
# trained on): speechocean762 dev-test (21 of its 62 dev speakers; real non-native speech),
# librispeech-mini dev (native read speech) and an4 test; with SYNTH=1 also a synthetic test set
# spoken by the held-out voices on held-out sentences (brown.txt lines with index % 100 == 0).
# Decoders at 640 ms blocks: ctc, sar with g = 0 (naive) and g = 2 (boundary-aware, the default),
# bsbs, offline; offline also at full context.
#
#   egs/default/local/evaluate.sh [MODEL_DIR] [MAX_UTTS] [JOBS]
#   env: DECODERS (default all six, as "decoder:block:g" words), SETS (default the dev-test sets),
#        OUT (default exp/eval), SYNTH=1, LM (--lm of asr decode: default none, the model alone;
#        auto = the model directory's own LM for bsbs/offline, or an LM directory)
#
# Each decode runs on 1 thread; JOBS of them at a time. Writes
# $OUT/<decoder>-<block>-g<g>/<set>/{summary.json,hyp.txt,ref.txt,errors.txt} and $OUT/results.md
# (local/results_table.py). MAX_UTTS: the first N utterances by id of each set.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(cd ../.. && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
model=${1:-$root/models/default}
max_utts=${2:-100000}
jobs=${3:-2}
shared=${SHARED:-$root/../shared}
out=${OUT:-exp/eval}
lm=${LM:-none}
decoders=${DECODERS:-"ctc:640:2 sar:640:0 sar:640:2 bsbs:640:2 offline:640:2 offline:full:2"}
heldout_voices="flite:rms espeak:en-us-nyc+f3 espeak:en-gb-scotland+m5"   # as local/prepare.py

[ -f data/devtest/librispeech_dev.jsonl ] || "$python" local/devtest.py --corpora "$shared/corpora" --out data/devtest
sets=${SETS:-"speechocean762_devtest=data/devtest/speechocean762_devtest.jsonl librispeech_dev=data/devtest/librispeech_dev.jsonl an4_test=data/devtest/an4_test.jsonl"}
if [ "${SYNTH:-0}" = 1 ]; then
  if [ ! -f data/synth_test/test/wav.scp ]; then
    mkdir -p data
    "$python" -c "
import sys
from asr.text import normalize_text
lines = open(sys.argv[1]).read().splitlines()
print('\n'.join(t for i, l in enumerate(lines) if i % 100 == 0 and (t := normalize_text(l))))
" "$shared/text/brown.txt" > data/heldout_prompts.txt
    # shellcheck disable=SC2086
    "$python" -m recipes.tts --text data/heldout_prompts.txt --num-utts 150 --out data/synth_test --split test \
      --voices $heldout_voices --jobs "$jobs" --seed 7
  fi
  sets="$sets synth_heldout=data/synth_test/test"
fi

jobs_list=()
for spec in $decoders; do
  IFS=: read -r decoder block g <<< "$spec"
  for set in $sets; do
    dir="$out/$decoder-$block-g$g/${set%%=*}"
    [ -f "$dir/summary.json" ] || jobs_list+=("$decoder $block $g ${set#*=} $dir")
  done
done
decode_one() {
  read -r decoder block g data dir <<< "$1"
  OMP_NUM_THREADS=1 "$python" -m blockasr decode --model "$model" --data "$data" --decoder "$decoder" --lm "$lm" \
    --block-ms "$block" --tentative-frames "$g" --threads 1 --max-utts "$max_utts" --out "$dir" --quiet \
    | tail -1 | sed "s|^|$decoder $block g=$g $(basename "$dir"): |"
}
export -f decode_one
export model max_utts python lm
printf '%s\n' "${jobs_list[@]}" | xargs -P "$jobs" -I{} bash -c 'decode_one "$@"' _ {}
"$python" local/results_table.py "$out" | tee "$out/results.md"
