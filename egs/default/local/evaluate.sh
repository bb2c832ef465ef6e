#!/usr/bin/env bash
# Score a model directory on CPU with `asr decode`: speechocean762/dev (real non-native speech,
# never used in training or validation) and a synthetic test set spoken by the held-out voices on
# held-out sentences (brown.txt lines with index % 100 == 0; local/make_carry.py keeps them out of
# the prompts). Decoders at 640 ms blocks: ctc, sar with g = 0 (naive) and g = 2 (boundary-aware,
# the default), bsbs, offline; offline also at full context.
#
#   egs/default/local/evaluate.sh [MODEL_DIR] [MAX_UTTS] [THREADS]
#
# Writes exp/eval/<decoder>-<block>-g<g>/<set>/{summary.json,hyp.txt,ref.txt,errors.txt} and
# exp/eval/results.md (local/results_table.py). MAX_UTTS: the first N utterances by id of each set.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(cd ../.. && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
model=${1:-$root/models/default}
max_utts=${2:-300}
threads=${3:-2}
shared=${SHARED:-$root/../shared}
out=exp/eval
heldout_voices="flite:rms espeak:en-us-nyc+f3 espeak:en-gb-scotland+m5"   # as local/prepare.py

if [ ! -f data/synth_test/test/wav.scp ]; then
  mkdir -p data
  "$python" -c "
import sys
from recipes.text import normalize_text
lines = open(sys.argv[1]).read().splitlines()
print('\n'.join(t for i, l in enumerate(lines) if i % 100 == 0 and (t := normalize_text(l))))
" "$shared/text/brown.txt" > data/heldout_prompts.txt
  # shellcheck disable=SC2086
  "$python" -m recipes.tts --text data/heldout_prompts.txt --num-utts 150 --out data/synth_test --split test \
    --voices $heldout_voices --jobs "$threads" --seed 7
fi

for spec in "ctc 640 2" "sar 640 0" "sar 640 2" "bsbs 640 2" "offline 640 2" "offline full 2"; do
  read -r decoder block g <<< "$spec"
  for set in "speechocean_dev=$shared/corpora/speechocean762/dev" "synth_heldout=data/synth_test/test"; do
    dir="$out/$decoder-$block-g$g/${set%%=*}"
    [ -f "$dir/summary.json" ] && continue
    echo "== $decoder block $block g=$g on ${set%%=*}" >&2
    "$python" -m blockasr decode --model "$model" --data "${set#*=}" --decoder "$decoder" --block-ms "$block" \
      --tentative-frames "$g" --threads "$threads" --max-utts "$max_utts" --out "$dir" --quiet | tail -1
  done
done
"$python" local/results_table.py "$out" | tee "$out/results.md"
