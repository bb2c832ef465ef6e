#!/usr/bin/env bash
# Assemble what device.sh left in $OUT (fetched here) into the shipped model directory.
#
#   egs/default/local/assemble.sh FETCHED_DIR [MODEL_DIR]
#
# FETCHED_DIR holds model.pt.part-NN (model.pt split under 16 MB), results.tgz and log.txt.
# MODEL_DIR (default models/default) receives config.yaml, model.pt (float16), tokenizer.model;
# the training logs and curves go to egs/default/exp/sar/ here, and are kept (tracked) in
# benchmarks/results/train_h200_default/.
set -euo pipefail
src=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/../../.." && pwd)
dst=${2:-$root/models/default}
mkdir -p "$dst" "$root/egs/default/exp/sar"
cat "$src"/model.pt.part-* > "$dst/model.pt"
tmp=$(mktemp -d)
tar xzf "$src/results.tgz" -C "$tmp"
cp "$tmp/egs/default/exp/sar/model/config.yaml" "$tmp/egs/default/exp/sar/model/tokenizer.model" "$dst/"
cp -r "$tmp/egs/default/exp/sar/." "$root/egs/default/exp/sar/"
cp "$src/log.txt" "$root/egs/default/exp/sar/device_log.txt"
[ -f "$src/gpu.csv" ] && cp "$src/gpu.csv" "$root/egs/default/exp/sar/"
rm -rf "$tmp"
logs=$root/benchmarks/results/train_h200_default
mkdir -p "$logs"
for f in train.csv valid.csv curves.png sessions.jsonl gpu.csv device_log.txt config.yaml; do
  [ -f "$root/egs/default/exp/sar/$f" ] && cp "$root/egs/default/exp/sar/$f" "$logs/"
done
ls -la "$dst"
