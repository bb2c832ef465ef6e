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
#   cmvn_utts [2000]               utterances (a random subset of train_set) for the CMVN statistics
#   models ["ctc joint sar"]       one conf/<model>.yaml each
#   average_num [5]                checkpoints averaged by stage 4
#   train_args, decode_args        extra options for asr train / asr decode ("--max-steps 50")
#   threads [""]                   if set, OMP_NUM_THREADS / MKL_NUM_THREADS for every command: on a
#                                  few shared cores, 1 thread per process trains a small model many
#                                  times faster than 2 (no OpenMP threads spinning while descheduled)
#   block_ms ["320 640 1280 full"] decoding block sizes
#   decoders_<model>               decoders tried per model [ctc: ctc; joint: ctc bsbs offline;
#                                  sar: sar ctc]; `offline` decodes at full context only, the
#                                  streaming decoders at every block size but `full`
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
#                                                      -> $exp/<model>/decode/<decoder>-<block>/<set>/summary.json
#   6 results    python -m recipes.results             -> RESULTS.md (decode table and stage times)
#
# Every step run appends `stage<TAB>marker<TAB>wall seconds<TAB>CPU seconds` to $exp/timing.tsv (CPU:
# user + system of the step's processes; CPU / wall shows how many cores the step really had).

blockasr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$blockasr_root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
if ! command -v asr >/dev/null 2>&1; then
  # Not installed (`pip install -e .` gives the console script): run the package from the checkout.
  asr() { "$python" -m blockasr "$@"; }
fi

stage=${stage:-0}
stop_stage=${stop_stage:-100}
data=${data:-data}
exp=${exp:-exp}
vocab_size=${vocab_size:-500}
cmvn_utts=${cmvn_utts:-2000}
models=${models:-"ctc joint sar"}
block_ms=${block_ms:-"320 640 1280 full"}
average_num=${average_num:-5}
train_args=${train_args:-}
decode_args=${decode_args:-}
threads=${threads:-}
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

current_stage=  # set by begin_stage; `once` records its steps' times under it

# begin_stage N WHAT...: log the start of stage N; the steps `once` runs from now on count for it.
begin_stage() {
  current_stage=$1; shift
  log "stage $current_stage: $*"
}

# once MARKER CMD ARGS...: run CMD unless MARKER exists; create MARKER when CMD succeeds. Inside a
# stage (begin_stage), the wall-clock and CPU seconds CMD took are appended to $exp/timing.tsv.
once() {
  local marker=$1; shift
  if [ -f "$marker" ]; then
    log "done already ($marker): $*"
    return 0
  fi
  log "$*"
  local t0=$SECONDS c0 c1
  _children_cpu c0
  "$@"
  mkdir -p "$(dirname "$marker")"
  touch "$marker"
  if [ -n "$current_stage" ]; then
    _children_cpu c1
    mkdir -p "$exp"
    printf '%s\t%s\t%s\t%s\n' "$current_stage" "$marker" $((SECONDS - t0)) \
      "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }')" >> "$exp/timing.tsv"
  fi
}

# _children_cpu VAR: set VAR to the CPU seconds (user + system) used so far by this shell's finished
# child processes. `times` must run in this shell (a $(...) subshell has children of its own).
_children_cpu() {
  local file="${TMPDIR:-/tmp}/blockasr-times.$$"
  times > "$file"
  printf -v "$1" '%s' "$(awk 'NR == 2 { t = 0; for (i = 1; i <= NF; i++) { split($i, p, "m");
                              sub("s", "", p[2]); t += p[1] * 60 + p[2] }; printf "%.2f", t }' "$file")"
  rm -f "$file"
}

manifest() { echo "$data/manifests/$1.jsonl"; }

# The decoders of one model: decoders_<model>; just ctc for a model name without that variable.
decoders_of() {
  local var="decoders_$1"
  echo "${!var:-ctc}"
}

# The block sizes one decoder is run with: offline decoding has no blocks, streaming needs one.
blocks_of() {
  local b
  if [ "$1" = offline ]; then echo full; return; fi
  for b in $block_ms; do [ "$b" = full ] || echo "$b"; done
}

_export_model() {  # _export_model MODEL: average the checkpoints, then write the model directory
  asr average --exp "$exp/$1" --num "$average_num" --out "$exp/$1/averaged.pt"
  asr export --exp "$exp/$1" --weights "$exp/$1/averaged.pt" --out "$exp/$1/model"
}

run_pipeline() {
  parse_options "$@"
  if [ -n "$threads" ]; then
    export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
  fi
  local tokenizer="$data/lang/bpe_$vocab_size" cmvn="$data/cmvn.json" m d b t out

  if in_stages 0; then
    begin_stage 0 "prepare"
    once "$data/.prepare.done" prepare_data
  fi
  if in_stages 1; then
    begin_stage 1 "tokenizer (vocab $vocab_size)"
    once "$tokenizer.done" asr tokenizer train --manifest "$(manifest "$train_set")" \
      --vocab-size "$vocab_size" --out "$tokenizer"
  fi
  if in_stages 2; then
    begin_stage 2 "global CMVN"
    once "$data/.cmvn.done" asr cmvn --manifest "$(manifest "$train_set")" --out "$cmvn" \
      --max-utts "$cmvn_utts"
  fi
  if in_stages 3; then
    for m in $models; do
      begin_stage 3 "train $m"
      # shellcheck disable=SC2086  # word splitting of the extra options is intended
      once "$exp/$m/.train.done" asr train --config "conf/$m.yaml" --out "$exp/$m" $train_args
    done
  fi
  if in_stages 4; then
    for m in $models; do
      begin_stage 4 "average and export $m"
      once "$exp/$m/.export.done" _export_model "$m"
    done
  fi
  if in_stages 5; then
    for m in $models; do
      for d in $(decoders_of "$m"); do
        for b in $(blocks_of "$d"); do
          for t in $test_sets; do
            out="$exp/$m/decode/$d-$b/$t"
            begin_stage 5 "decode $m with $d, block $b ms, on $t"
            once "$out/.done" asr decode --model "$exp/$m/model" --data "$(manifest "$t")" \
              --decoder "$d" --block-ms "$b" --out "$out" $decode_args
          done
        done
      done
    done
  fi
  if in_stages 6; then
    begin_stage 6 "results"
    "$python" -m recipes.results --exp "$exp" --out RESULTS.md --title "$title"
  fi
}
