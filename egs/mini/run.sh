#!/usr/bin/env bash
# Synthetic speech end to end on 2 CPU cores in about 10 minutes: a small streaming model meant to
# recognise voices it never heard (RESULTS.md: the reference run, stage times and WER; not there yet).
# Training text: short Brown corpus sentences spoken by the Debian TTS voices (espeak-ng, flite,
# festival; the held-out voices excluded);
# valid: the same voices on LJSpeech sentences; test: held-out voices on LJSpeech sentences
# (add `ljspeech` to --test-sets for real speech from shared/corpora: slow, and far from the
# synthetic training data).
#
#   ./run.sh [--stage N] [--stop-stage M] [--train-utts 2000] [--models "sar ctc"] [--nj 2]
#
# Stages (recipes/stages.sh): 0 prepare, 1 tokenizer, 2 cmvn, 3 train, 4 average+export, 5 decode,
# 6 RESULTS.md. Any variable below can be overridden with --name value; shorter runs (CI:
# tests/test_mini_recipe.py) lower train_utts and pass `--max-steps` in train_args.

set -euo pipefail
cd "$(dirname "$0")"

shared=../../../shared
train_utts=2000
train_max_words=10                  # short training sentences: CTC finds its alignments in fewer steps
eval_utts=600                       # spread over all voices; ~1/5 are held out
heldout_voices="flite:slt espeak:en-gb-scotland* espeak:*+m7 festival:*"
nj=2                                # synthesis processes
train_set=tts_train
valid_set=tts_valid
test_sets="tts_heldout"
vocab_size=256                      # 500 pieces stayed on the CTC plateau longer (RESULTS.md)
cmvn_utts=500
models="sar"
block_ms="640"
decoders_sar="sar ctc"
average_num=3
threads=2                           # training alone on 2 cores: 1.35x the steps of 1 thread (measured)
decode_args="--threads 1 --quiet --max-utts 60"
title="mini: synthetic speech, held-out voices"

prepare_data() {
  local -
  set -f  # $heldout_voices holds globs for recipes.tts, not for the shell
  mkdir -p "$data/manifests"
  # training voices on Brown sentences
  asr prepare tts --text "$shared/text/brown.txt" --out "$data/tts_train" --split train \
    --num-utts "$train_utts" --max-words "$train_max_words" --exclude-voices $heldout_voices --jobs "$nj" --seed 0
  # LJSpeech sentences: seen voices (valid) and held-out voices (test)
  asr prepare tts --text "$shared/text/ljspeech_transcripts.txt" --text-format kaldi \
    --out "$data/tts_eval" --split valid --heldout-split heldout --num-utts "$eval_utts" \
    --heldout-voices $heldout_voices --jobs "$nj" --seed 1
  asr prepare kaldi "$data/tts_train/train" "$(manifest tts_train)"
  asr prepare kaldi "$data/tts_eval/valid" "$(manifest tts_valid)"
  asr prepare kaldi "$data/tts_eval/heldout" "$(manifest tts_heldout)"
  if [[ " $test_sets " == *" ljspeech "* ]]; then
    asr prepare kaldi "$shared/corpora/ljspeech-part/train" "$(manifest ljspeech)"
  fi
}

source ../../recipes/stages.sh
run_pipeline "$@"
