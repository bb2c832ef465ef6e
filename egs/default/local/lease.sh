#!/usr/bin/env bash
# The run behind device.sh start (in the background, setsid): prepare, benchmark, train, export.
#   bash egs/default/local/lease.sh END_EPOCH_S MODEL
# env ALSO="m1 m2": conf/<m>.yaml trained beside MODEL on the same GPU at the same time, until MODEL's
# training ends, each exported to exp/<m>/model (log: /tmp/lease/<m>.log); from the carried weights
# (--init /tmp/init-model) when conf/<m>.yaml has an `init:` line, else from scratch.
# One run keeps the H200 about 26 % busy (its steps are bound by the host's kernel launches), so
# two more should cost the main run little; they share the machine evenly, which makes them a fair
# comparison of each other (conf/contextual.yaml against conf/plain.yaml).
# Lease 6 (2026-12-02) started all three at once: their wave caches, built at the same time with
# 16 threads each on 16 cores, took 694 s instead of 116 s, and the two extra runs were killed
# before their first step. So the extra runs now start together once the main run has its wave
# cache on the GPU ("wave cache: ... GiB on", not tqdm's bar of the same name), with 6 threads each,
# and each trains until the main run's training ends: the same seconds for each of them (a fair
# comparison of each other), fewer than the main run's. The main model is reported as soon as it
# is exported (main.done), whether or not the extra runs have finished.
set -uo pipefail
end=$1
model=$2
also=${ALSO:-}
lease=/tmp/lease
cd "$(dirname "$0")/.."
left() { echo $(( end - $(date +%s) )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > $lease/gpu.csv 2>/dev/null &
smi=$!
trap 'kill $smi 2>/dev/null; touch $lease/done' EXIT
while [ ! -f $lease/synth.done ]; do sleep 2; done
tail -4 $lease/synth.log
./run.sh --stage 0 --stop-stage 0 --nj 16 --corpora /tmp/carry/corpora --prompts /tmp/carry/prompts.txt.gz \
  || { echo "stage 0 failed"; exit 1; }
echo "data ready: $(left) s left"
if [ "$(left)" -gt 400 ] && [ ! -f $lease/bench.done ]; then
  touch $lease/bench.done
  (cd ../.. && timeout 150 python3 benchmarks/train_step.py --config egs/default/conf/$model.yaml \
    --manifest egs/default/data/manifests/train.jsonl --steps 10 --warmup 3) || echo "train_step benchmark failed"
fi
# train with SDPA's cuDNN backend off if the benchmark found the all-heads step faster without it
if python3 -c "
import json, sys
r = {x['mode']: x['audio_s_per_s'] for x in json.load(open('../../benchmarks/results/train_step_cuda.json'))['results']}
sys.exit(0 if r['all, no cuDNN attention'] > 1.05 * r['all'] else 1)" 2>/dev/null; then
  grep -q "cudnn_attention: false" conf/$model.yaml || sed -i "s/cudnn_attention: true/cudnn_attention: false/" conf/$model.yaml
  echo "training with cudnn_attention: false"
fi
train=$(( $(left) - 70 ))
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # several runs share the GPU's memory
pids=()
train_end=$(( $(date +%s) + train ))  # when the main run's training stops
for m in $also; do
  grep -q "cudnn_attention: false" conf/$m.yaml || sed -i "s/cudnn_attention: true/cudnn_attention: false/" conf/$m.yaml
  ( until grep -q "wave cache: .* GiB on" $lease/log.txt; do sleep 5; done
    secs=$(( train_end - $(date +%s) - 20 ))
    init=()
    grep -q "^init:" conf/$m.yaml && [ -f /tmp/init-model/model.pt ] && init=(--init /tmp/init-model)
    echo "training $m for $secs s ${init[*]}"
    OMP_NUM_THREADS=6 ./run.sh --stage 2 --stop-stage 2 --model "$m" --train-seconds "$secs" "${init[@]}" \
      || echo "training $m failed"
    ./run.sh --stage 3 --stop-stage 3 --model "$m" --average-num 5 || echo "export $m failed"
    echo "$m done: $(left) s left" ) > $lease/$m.log 2>&1 &
  pids+=($!)
  echo "also training $m (log $lease/$m.log)"
done
if [ "$train" -gt 30 ]; then
  init=()
  [ -f /tmp/init-model/model.pt ] && init=(--init /tmp/init-model)
  ./run.sh --stage 2 --stop-stage 2 --model "$model" --train-seconds "$train" "${init[@]}" || echo "training failed"
fi
echo "trained: $(left) s left"
./run.sh --stage 3 --stop-stage 3 --model "$model" --average-num 5 || echo "export failed"
touch $lease/main.done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for m in $also; do tail -n 1 $lease/$m.log; done
echo "lease done: $(left) s left"
