#!/usr/bin/env bash
# Real speech from Kaldi data directories (default: the corpora in shared/corpora), optionally
# mixed with synthetic speech: a small model trained and evaluated on real voices.
#
#   ./run.sh [--stage N] [--stop-stage M] [--corpora DIR] [--tts-utts 0]
#
# Stages (recipes/stages.sh): 0 prepare, 1 tokenizer, 2 cmvn, 3 train, 4 average+export, 5 decode,
# 6 RESULTS.md. Any variable below can be overridden with --name value.

set -euo pipefail
cd "$(dirname "$0")"

corpora=../../../shared/corpora     # holds <corpus>/<split>/{wav.scp,text,utt2spk}
# name=data_dir pairs; each becomes $data/manifests/<name>.jsonl
kaldi_sets="speechocean_train=$corpora/speechocean762/train speechocean_dev=$corpora/speechocean762/dev ljspeech=$corpora/ljspeech-part/train fsdd=$corpora/fsdd/all"
train_parts="speechocean_train ljspeech"   # concatenated into the training manifest
tts_utts=4000                       # synthetic utterances added to training (0: none)
tts_text=../../../shared/text/brown.txt
nj=2                                # TTS worker processes
train_set=train
valid_set=speechocean_dev
test_sets="speechocean_dev fsdd"
vocab_size=256
title="Real speech (shared/corpora)"

prepare_data() {
  local pair name parts=()
  mkdir -p "$data/manifests"
  for pair in $kaldi_sets; do
    name=${pair%%=*}
    asr prepare kaldi "${pair#*=}" "$(manifest "$name")"
  done
  for name in $train_parts; do parts+=("$(manifest "$name")"); done
  if [ "$tts_utts" -gt 0 ]; then
    asr prepare tts --text "$tts_text" --out "$data/tts" --num-utts "$tts_utts" --jobs "$nj"
    asr prepare kaldi "$data/tts/train" "$(manifest tts_train)"
    parts+=("$(manifest tts_train)")
  fi
  cat "${parts[@]}" > "$(manifest "$train_set")"
}

source ../../recipes/stages.sh
run_pipeline "$@"
