#!/usr/bin/env bash
# TED-LIUM release 2 (or release 3's legacy split): blockwise conformer CTC / joint / SAR.
#
#   ./run.sh --corpus-dir /data/TEDLIUM_release2 [--stage N] [--stop-stage M]
#   ./run.sh --corpus-dir /data/TEDLIUM_release-3 --layout legacy     (or speaker-adaptation)
#
# Stages (recipes/stages.sh): 0 prepare, 1 tokenizer, 2 cmvn, 3 train, 4 average+export, 5 decode,
# 6 RESULTS.md. Any variable below can be overridden with --name value.

set -euo pipefail
cd "$(dirname "$0")"

corpus_dir=/data/TEDLIUM_release2   # release 2 or 3 folder (or the folder that holds it)
layout=legacy                       # release 3 only: legacy | speaker-adaptation | data
train_set=train
valid_set=dev
test_sets="dev test"
vocab_size=500                      # as ESPnet's tedlium2 recipe
title="TED-LIUM 2"

prepare_data() {
  asr prepare tedlium --root "$corpus_dir" --out "$data/manifests" --layout "$layout"
}

source ../../recipes/stages.sh
run_pipeline "$@"
