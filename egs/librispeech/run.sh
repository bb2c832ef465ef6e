#!/usr/bin/env bash
# LibriSpeech-100: blockwise conformer CTC / joint CTC-attention / SAR, streaming decoding.
#
#   ./run.sh --corpus-dir /data/LibriSpeech [--stage N] [--stop-stage M] [--download true]
#
# Stages (recipes/stages.sh): 0 prepare, 1 tokenizer, 2 cmvn, 3 train, 4 average+export, 5 decode,
# 6 RESULTS.md. Any variable below can be overridden with --name value.

set -euo pipefail
cd "$(dirname "$0")"

corpus_dir=/data/LibriSpeech        # the LibriSpeech folder, or the folder to download it into
download=false                      # true: fetch the subsets below from openslr first (needs network)
subsets="train-clean-100 dev-clean dev-other test-clean test-other"
train_set=train-clean-100
valid_set=dev-clean
test_sets="dev-clean dev-other test-clean test-other"
vocab_size=5000                     # as ESPnet's librispeech_100 recipe
title="LibriSpeech-100"

prepare_data() {
  local download_args=()
  if [ "$download" = true ]; then
    download_args=(--download $subsets)
  fi
  asr prepare librispeech --root "$corpus_dir" --out "$data/manifests" --subsets $subsets \
    "${download_args[@]}"
}

source ../../recipes/stages.sh
run_pipeline "$@"
