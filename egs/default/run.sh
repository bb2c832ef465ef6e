#!/usr/bin/env bash
# The default model shipped in models/default: the real speech of shared/corpora (every corpus but
# its dev-test speakers, local/splits.py) plus synthetic speech from the Debian TTS voices; one SAR
# model with CTC and attention heads (conf/sar.yaml), trained with dynamic blocks and on-GPU
# augmentation, continued from lease to lease (device.sh).
#
#   ./run.sh [--stage N] [--stop-stage M] [--corpora DIR] [--prompts FILE] [--train-seconds S] [--gpus G] [--init DIR]
#
# Stages: 0 prepare (local/prepare.py: real speech to WAV, synthetic speech, manifests; then
# local/long_segments.py: long_train.jsonl, 60-300 s segments for conf/offline_long.yaml),
# 1 tokenizer, 2 train (resumes; with --train-seconds S it stops cleanly after S seconds, so running
# it again continues), 3 average the last checkpoints and export a float16 model directory
# (exp/sar/model). The GPU machine runs it through device.sh; local/make_carry.py builds the
# re-encoded corpora and prompts it reads there; local/evaluate.sh scores the result on CPU.
# local/train_lm.sh trains the external LM for shallow fusion (conf/lm.yaml) on CPU.
# Any variable below can be overridden with --name value.

set -euo pipefail
cd "$(dirname "$0")"

corpora=/tmp/blockasr-carry/corpora  # Kaldi dirs (local/make_carry.py --work); never speechocean762/dev
prompts=../../.carry/text/prompts.txt.gz
tts_utts=12000                      # synthetic utterances over all voices (~15 h)
flite_utts=4000                     # extra utterances of the flite voices (~6 h)
synth_only=0                        # 1: stage 0 synthesises only (device.sh, while corpora travel)
nj=16                               # worker processes for decoding and synthesis
vocab_size=256
tokenizer_lines=20000               # distinct transcripts the tokenizer is trained on
train_seconds=0                     # 0: train to optim.max_steps; else a wall-clock budget
gpus=1                              # > 1: data parallel through torchrun (DDP), one process per GPU
init=""                             # model dir to start from, in place of the config's `init`
average_num=5
model=sar

source ../../recipes/stages.sh

# _tokenizer PREFIX: sentencepiece on tokenizer_lines distinct training transcripts (seeded draw).
# On the GPU machine `asr tokenizer train --manifest train.jsonl` (107k lines, repeats included) ran
# past 7 minutes without finishing; 20k distinct lines took seconds, and made the shipped tokenizer.
_tokenizer() {
  "$python" -c "
import json, random, sys
texts = sorted({json.loads(line)['text'] for line in open(sys.argv[1])})
random.Random(0).shuffle(texts)
open(sys.argv[2], 'w').write('\\n'.join(texts[:int(sys.argv[3])]) + '\\n')" "$(manifest train)" "$data/tok_text.txt" "$tokenizer_lines"
  asr tokenizer train --text "$data/tok_text.txt" --vocab-size "$vocab_size" --out "$1"
}

main() {
  parse_options "$@"
  local tokenizer="$data/lang/bpe_$vocab_size" out="$exp/$model"
  if in_stages 0; then
    log "stage 0: prepare"
    local args=(--prompts "$prompts" --data "$data" --tts-utts "$tts_utts" --flite-utts "$flite_utts" --jobs "$nj")
    if [ "$synth_only" = 1 ]; then
      once "$data/.synth.done" "$python" local/prepare.py "${args[@]}" --synth-only
    else
      once "$data/.prepare.done" "$python" local/prepare.py "${args[@]}" --corpora "$corpora"
      # long segments of the real training speech (conf/offline_long.yaml; a few seconds)
      once "$data/.long.done" "$python" local/long_segments.py --manifests "$data/manifests" \
        --out "$data/manifests/long_train.jsonl" --draws 3
    fi
  fi
  if in_stages 1; then
    log "stage 1: tokenizer (vocab $vocab_size)"
    once "$tokenizer.done" _tokenizer "$tokenizer"
  fi
  if in_stages 2; then
    log "stage 2: train $model"
    local launch=("$python")
    [ "$gpus" -gt 1 ] && launch=("$python" -m torch.distributed.run --standalone --nproc-per-node "$gpus")
    if [ "$train_seconds" -gt 0 ]; then
      "${launch[@]}" local/train_timed.py --config "conf/$model.yaml" --out "$out" --seconds "$train_seconds" \
        ${init:+--init "$init"}
    else
      "${launch[@]}" -m blockasr train --config "conf/$model.yaml" --out "$out" --no-progress
    fi
  fi
  if in_stages 3; then
    log "stage 3: average the last $average_num checkpoints, export float16"
    asr average --exp "$out" --num "$average_num" --out "$out/averaged.pt"
    asr export --exp "$out" --weights "$out/averaged.pt" --out "$out/model" --half
  fi
}

main "$@"
