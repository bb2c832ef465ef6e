#!/usr/bin/env bash
# Run egs/default on the leased GPU machine (the `run` device tool), inside a fixed time budget.
#
#   bash egs/default/device.sh [BUDGET_S] [AVERAGE_NUM] [BENCH]      (carry: .tts .whl .carry)
#   env: MODEL (conf/<MODEL>.yaml, default sar), PYTHON, RUN_ARGS (extra run.sh options for stages 0-1),
#        GPUS (default: every GPU nvidia-smi lists; > 1 trains with DDP),
#        PROFILE_AT (seconds into training: py-spy dumps and records 20 s of each training process;
#        the stacks go into results.tgz as prof/)
#
# Unpacks the Debian TTS packages (.tts/*.deb) under /tmp/tts, the wheels (.whl) under /tmp/site and
# the re-encoded corpora (.carry/corpora.tgz, local/make_carry.py) under /tmp/carry,
# runs stages 0-1 (skipped when done: a warm machine keeps their outputs), trains for what is left
# of BUDGET_S after a reserve for averaging, export and packing, then exports the averaged model
# (float16) and leaves in $OUT: model.pt split into parts under 16 MB, results.tgz (configs,
# tokenizer, logs, curves, CMVN) and log.txt. Run it again on the same machine to continue training.
# BENCH = 1 (third argument) also runs the GPU section of benchmarks/encoder.py when at least 100 s are left.
set -uo pipefail
t0=$(date +%s)
budget=${1:-570}
average_num=${2:-5}
model=${MODEL:-sar}
python=${PYTHON:-python3}
bench=${3:-0}
root=$(pwd)
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/log.txt") 2>&1
elapsed() { echo $(( $(date +%s) - t0 )); }

if [ ! -x /tmp/tts/bin/espeak-ng ]; then
  mkdir -p /tmp/tts/bin
  for f in .tts/*.deb; do dpkg -x "$f" /tmp/tts; done
  printf '#!/bin/sh\nexec /tmp/tts/usr/bin/espeak-ng --path=/tmp/tts/usr/lib/x86_64-linux-gnu "$@"\n' > /tmp/tts/bin/espeak-ng
  ln -sf /tmp/tts/usr/bin/flite /tmp/tts/bin/flite
  chmod +x /tmp/tts/bin/espeak-ng
fi
L=/tmp/tts/usr/lib/x86_64-linux-gnu
export PATH=/tmp/tts/bin:$PATH LD_LIBRARY_PATH=$L:$L/pulseaudio:/tmp/tts/lib/x86_64-linux-gnu
if [ ! -f /tmp/site/.done ]; then
  $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done || exit 1
fi
export PYTHONPATH=/tmp/site:$root
if [ ! -d /tmp/carry/corpora ]; then
  mkdir -p /tmp/carry && tar xzf .carry/corpora.tgz -C /tmp/carry || exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 >> "$out/gpu.csv" 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT  # a left-over sampler would hold the log pipe open past the end
echo "setup: $(elapsed) s"

egs/default/run.sh --stage 0 --stop-stage 1 --corpora /tmp/carry/corpora ${RUN_ARGS:-} || { echo "stages 0-1 failed"; exit 1; }
echo "data + tokenizer: $(elapsed) s"
reserve=50
[ "$bench" = 1 ] && reserve=$((reserve + 100))
left=$(( budget - $(elapsed) - reserve ))
gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
if [ -n "${PROFILE_AT:-}" ]; then
  mkdir -p prof
  ( sleep "$PROFILE_AT"
    for pid in $(pgrep -f local/train_timed.py); do
      timeout 40 /tmp/site/bin/py-spy dump --pid "$pid" > "prof/dump-$pid.txt" 2>&1
      timeout 40 /tmp/site/bin/py-spy record --pid "$pid" -d 20 -r 50 -f raw -o "prof/record-$pid.txt" \
        > "prof/record-$pid.log" 2>&1 &
    done; wait ) &
fi
if [ "$left" -gt 30 ]; then
  egs/default/run.sh --stage 2 --stop-stage 2 --model "$model" --train-seconds "$left" --gpus "$gpus" \
    || echo "training failed"
fi
echo "trained: $(elapsed) s"
egs/default/run.sh --stage 3 --stop-stage 3 --model "$model" --average-num "$average_num" || echo "export failed"

if [ "$bench" = 1 ] && [ $(( budget - $(elapsed) )) -gt 100 ]; then
  timeout $(( budget - $(elapsed) - 15 )) $python benchmarks/encoder.py --skip-cpu && cp benchmarks/results/encoder_cuda.* "$out"/
fi

exp=egs/default/exp/$model
[ -f $exp/model/model.pt ] && split -b 15000000 -d $exp/model/model.pt "$out/model.pt.part-"
tar czf "$out/results.tgz" --ignore-failed-read $exp/config.yaml $exp/cmvn.json $exp/train.csv $exp/valid.csv \
  $exp/curves.png $exp/sessions.jsonl $exp/model/config.yaml $exp/model/tokenizer.model \
  egs/default/data/manifests/valid.jsonl prof 2>/dev/null
ls -la "$out" $exp
echo "done: $(elapsed) s"
