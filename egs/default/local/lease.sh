#!/usr/bin/env bash
# The run behind device.sh start (in the background, setsid): prepare, benchmark, train, export.
#   bash egs/default/local/lease.sh END_EPOCH_S MODEL
set -uo pipefail
end=$1
model=$2
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
if [ "$train" -gt 30 ]; then
  init=()
  [ -f /tmp/init-model/model.pt ] && init=(--init /tmp/init-model)
  ./run.sh --stage 2 --stop-stage 2 --model "$model" --train-seconds "$train" "${init[@]}" || echo "training failed"
fi
echo "trained: $(left) s left"
./run.sh --stage 3 --stop-stage 3 --model "$model" --average-num 5 || echo "export failed"
echo "lease done: $(left) s left"
