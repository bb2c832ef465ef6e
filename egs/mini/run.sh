#!/usr/bin/env bash
# Synthetic speech end to end on 2 CPU cores: a tiny model, minutes not days.
# Training text: Brown corpus sentences spoken by the Debian TTS voices (espeak-ng, flite, festival);
# valid: the same voices on LJSpeech sentences; test: held-out voices on LJSpeech sentences, and real
# speech (ljspeech-part) from shared/corpora.
#
#   ./run.sh [--stage N] [--stop-stage M] [--train-utts 3000] [--nj 2]
#
# Stages (recipes/stages.sh): 0 prepare, 1 tokenizer, 2 cmvn, 3 train, 4 average+export, 5 decode,
# 6 RESULTS.md. Any variable below can be overridden with --name value.

set -euo pipefail
cd "$(dirname "$0")"

shared=../../../shared
train_utts=3000
eval_utts=400                       # spread over all voices; ~1/5 are held out
heldout_voices="flite:slt espeak:en-gb-scotland* espeak:*+m7 festival:*"
nj=2
train_set=tts_train
valid_set=tts_valid
test_sets="tts_valid tts_heldout ljspeech"
vocab_size=128
models="ctc sar"
block_ms="640 full"
title="mini: synthetic speech, tiny model"

prepare_data() {
  local -
  set -f  # $heldout_voices holds globs for recipes.tts, not for the shell
  mkdir -p "$data/manifests"
  # training voices on Brown sentences
  asr prepare tts --text "$shared/text/brown.txt" --out "$data/tts_train" --split train \
    --num-utts "$train_utts" --exclude-voices $heldout_voices --jobs "$nj" --seed 0
  # LJSpeech sentences: seen voices (valid) and held-out voices (test)
  asr prepare tts --text "$shared/text/ljspeech_transcripts.txt" --text-format kaldi \
    --out "$data/tts_eval" --split valid --heldout-split heldout --num-utts "$eval_utts" \
    --heldout-voices $heldout_voices --jobs "$nj" --seed 1
  asr prepare kaldi "$data/tts_train/train" "$(manifest tts_train)"
  asr prepare kaldi "$data/tts_eval/valid" "$(manifest tts_valid)"
  asr prepare kaldi "$data/tts_eval/heldout" "$(manifest tts_heldout)"
  asr prepare kaldi "$shared/corpora/ljspeech-part/train" "$(manifest ljspeech)"
}

source ../../recipes/stages.sh
run_pipeline "$@"
