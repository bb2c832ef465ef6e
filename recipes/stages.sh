# The staged pipeline shared by every egs/<corpus>/run.sh. Source it; do not run it.
#
# A run.sh sets the variables below (defaults in brackets), defines `prepare_data` (stage 0: write
# $data/manifests/<set>.jsonl for train_set, valid_set and every test set), then calls
# `run_pipeline "$@"`. Every variable can be overridden on the command line: `--vocab-size 500`
# sets vocab_size, `--models "ctc sar"` sets models (Kaldi's parse_options convention).
#
#   stage [0] / stop_stage [100]   the stages to run
#   data [data], exp [exp]         outputs (relative to the egs folder, where run.sh runs; the
#                                  conf/*.yaml files name ../data/..., so keep data=data with them)
#   train_set valid_set test_sets  manifest names under $data/manifests (without .jsonl)
#   vocab_size [500]               sentencepiece vocabulary (tokenizer: $data/lang/bpe_$vocab_size.model)
#   models ["ctc joint sar"]       one conf/<model>.yaml each
#   average_num [5]                checkpoints averaged by stage 4
#   train_args, decode_args        extra options for asr train / asr decode ("--max-steps 50")
#   block_ms ["320 640 1280 full"] decoding block sizes
#   decoders_<model>               decoders tried per model [ctc: ctc; joint: ctc bsbs offline;
#                                  sar: sar ctc]; `offline` decodes at full context only
#   title                          heading of RESULTS.md
#
# Stages (each idempotent: a finished step leaves a .done marker and is skipped on re-runs;
# delete the marker, or the output folder, to redo it):
#   0 prepare    prepare_data                          -> $data/manifests/*.jsonl
#   1 tokenizer  asr tokenizer train                   -> $data/lang/bpe_N.model
#   2 cmvn       asr cmvn                              -> $data/cmvn.json
#   3 train      asr train (each model)                -> $exp/<model>/
#   4 average    asr average, then asr export          -> $exp/<model>/model/ (a model directory)
#   5 decode     asr decode (each model, decoder, block size, test set)
#                                                      -> $exp/<model>/decode/<decoder>-<block>/<set>/
#   6 results    python -m recipes.results             -> RESULTS.md

blockasr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$blockasr_root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
if ! command -v asr >/dev/null 2>&1; then
  # Not installed (`pip install -e .` gives the console script): run the package from the checkout.
  asr() { "$python" -m asr.cli.main "$@"; }
fi

stage=${stage:-0}
stop_stage=${stop_stage:-100}
data=${data:-data}
exp=${exp:-exp}
vocab_size=${vocab_size:-500}
models=${models:-"ctc joint sar"}
block_ms=${block_ms:-"320 640 1280 full"}
average_num=${average_num:-5}
train_args=${train_args:-}
decode_args=${decode_args:-}
decoders_ctc=${decoders_ctc:-"ctc"}
decoders_joint=${decoders_joint:-"ctc bsbs offline"}
decoders_sar=${decoders_sar:-"sar ctc"}
title=${title:-"Results"}

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') ($(basename "$0")) $*" >&2; }

# parse_options "$@": --name value (or --name=value) sets the variable name (dashes -> underscores);
# it must already exist, so a typo is an error rather than a silently ignored option.
parse_options() {
  while [ $# -gt 0 ]; do
    local opt=$1 value name
    case $opt in
      --help|-h) sed -n '2,/^$/p' "$(basename "$0")" | sed 's/^# \{0,1\}//'; exit 0 ;;  # run.sh cd's to its folder
      --*=*) name=${opt%%=*}; value=${opt#*=}; shift ;;
      --*) [ $# -ge 2 ] || { echo "$0: option $opt needs a value" >&2; exit 1; }
           name=$opt; value=$2; shift 2 ;;
      *) echo "$0: unexpected argument '$opt' (options are --name value)" >&2; exit 1 ;;
    esac
    name=${name#--}; name=${name//-/_}
    if [ -z "${!name+set}" ]; then
      echo "$0: unknown option --${name//_/-}" >&2; exit 1
    fi
    printf -v "$name" '%s' "$value"
  done
}

# in_stages N: whether stage N lies in stage..stop_stage.
in_stages() { [ "$stage" -le "$1" ] && [ "$1" -le "$stop_stage" ]; }

# once MARKER CMD ARGS...: run CMD unless MARKER exists; create MARKER when CMD succeeds.
once() {
  local marker=$1; shift
  if [ -f "$marker" ]; then
    log "done already ($marker): $*"
    return 0
  fi
  log "$*"
  "$@"
  mkdir -p "$(dirname "$marker")"
  touch "$marker"
}

manifest() { echo "$data/manifests/$1.jsonl"; }

# The decoders of one model: decoders_<model>; just ctc for a model name without that variable.
decoders_of() {
  local var="decoders_$1"
  echo "${!var:-ctc}"
}

# The block sizes one decoder is run with: offline decoding has no blocks.
blocks_of() {
  if [ "$1" = offline ]; then echo full; else echo "$block_ms"; fi
}

_export_model() {  # _export_model MODEL: average the checkpoints, then write the model directory
  asr average --exp "$exp/$1" --num "$average_num" --out "$exp/$1/averaged.pt"
  asr export --exp "$exp/$1" --weights "$exp/$1/averaged.pt" --out "$exp/$1/model"
}

run_pipeline() {
  parse_options "$@"
  local tokenizer="$data/lang/bpe_$vocab_size" cmvn="$data/cmvn.json" m d b t out

  if in_stages 0; then
    log "stage 0: prepare"
    once "$data/.prepare.done" prepare_data
  fi
  if in_stages 1; then
    log "stage 1: tokenizer (vocab $vocab_size)"
    once "$tokenizer.done" asr tokenizer train --manifest "$(manifest "$train_set")" \
      --vocab-size "$vocab_size" --out "$tokenizer"
  fi
  if in_stages 2; then
    log "stage 2: global CMVN"
    once "$data/.cmvn.done" asr cmvn --manifest "$(manifest "$train_set")" --out "$cmvn"
  fi
  if in_stages 3; then
    for m in $models; do
      log "stage 3: train $m"
      # shellcheck disable=SC2086  # word splitting of the extra options is intended
      once "$exp/$m/.train.done" asr train --config "conf/$m.yaml" --out "$exp/$m" $train_args
    done
  fi
  if in_stages 4; then
    for m in $models; do
      log "stage 4: average and export $m"
      once "$exp/$m/.export.done" _export_model "$m"
    done
  fi
  if in_stages 5; then
    for m in $models; do
      for d in $(decoders_of "$m"); do
        for b in $(blocks_of "$d"); do
          for t in $test_sets; do
            out="$exp/$m/decode/$d-$b/$t"
            log "stage 5: decode $m with $d, block $b ms, on $t"
            once "$out/.done" asr decode --model "$exp/$m/model" --data "$(manifest "$t")" \
              --decoder "$d" --block-ms "$b" --out "$out" $decode_args
          done
        done
      done
    done
  fi
  if in_stages 6; then
    log "stage 6: results"
    "$python" -m recipes.results --exp "$exp" --out RESULTS.md --title "$title"
  fi
}
