#!/usr/bin/env bash
# One training run of egs/default on the leased GPU machine (the `run` device tool), spread over
# several calls to one warm machine: the corpora travel in parts (a call carries at most 64 MiB,
# the repository's model takes 35 of them), and the training runs on in the background between
# calls (a process started with setsid outlives its call), so no call has to fit the whole run.
#
#   bash egs/default/device.sh setup            carry: .tts .whl .carry/p1    unpack; start the synthesis
#   bash egs/default/device.sh setup            carry: .carry/m .carry/p2 ... unpack more parts
#   bash egs/default/device.sh start END_S [W]  carry: the last parts         unpack; start the run in the
#                                               background (it ends END_S seconds from now), follow it W s
#   bash egs/default/device.sh wait W           follow the run for up to W seconds
#   bash egs/default/device.sh fetch M          exp/M/model (a run beside the main one, lease.sh ALSO)
#
# .whl holds the wheels the GPU image lacks (for Python 3.12): soundfile, cffi, pycparser, jiwer,
# rapidfuzz and click (asr.train imports jiwer; session 15's first start died on it in the background,
# so `start` now checks that the training stack imports before it starts anything).
#
# Keep the calls back to back: a machine left idle longer than the tool's idle_release_s (30 s in
# session 7; `status` says) goes back, with the run and everything unpacked on it, and the next call
# gets a bare machine (session 7 lost its training lease that way, seven minutes after `start`).
# Prepare everything local before `setup`, and between `wait` calls do nothing but read the output.
#
# The parts come from local/make_carry.py (corpora, prompts, RIRs in .carry/p<k>). To save 35 MB
# per call, the starting weights travel once, in .carry/m/model.pt (moved out of models/default for
# the lease, so the working tree is small); they become the model directory /tmp/init-model that
# the run starts from (`init`).
#
# Every call leaves in $OUT what the run has so far (the tool brings back at most 8 files a call):
# log.txt, logs.tgz (train.csv, valid.csv, sessions.jsonl, the train-step benchmark), also.tgz (the
# logs of the runs beside the main one, lease.sh ALSO); once the main run is exported, also
# model.pt in parts under 16 MB (model.pt.part-NN; `cat` them) and results.tgz (configs, logs,
# curves, CMVN). The runs beside it come back with `fetch M`, one call each, issued at once after
# the call that shows "lease done" (lease 7 lost three such models to a gap of under a minute). The run itself is
# local/lease.sh: stage 0 (prepare) and the train-step benchmark, training until END_S - 60 s
# (local/train_timed.py), then averaging and a float16 export. env: MODEL (conf/<MODEL>.yaml).
#
# The LM text (local/train_lm.sh stage 0, run here: tar czf .carry/p0/lm-text.tgz -C egs/default
# data/lm) travels in any part; once soundfile can load (the .tts debs, or only libsndfile's in
# .carry/sf: asr.train imports it), `setup` trains the external LM (conf/lm_large.yaml) and the SAR
# LM subnetwork's text pre-training (conf/lm_sar.yaml) on the GPU, one after the other, while the
# CPUs synthesise; the next call after they finish brings back lm/<conf>/ (the float16 LM
# directory, train.csv, valid.csv; run train_lm.sh stage 2 here for the perplexities).
set -uo pipefail
root=$(pwd)
out=${OUT:-/tmp/out}
lease=/tmp/lease
mkdir -p "$out" $lease
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$root
L=/tmp/tts/usr/lib/x86_64-linux-gnu
export PATH=/tmp/tts/bin:$PATH LD_LIBRARY_PATH=$L:$L/pulseaudio:/tmp/tts/lib/x86_64-linux-gnu
model=${MODEL:-sar}
exp=egs/default/exp/$model
data=egs/default/data

unpack() {
  if [ -d .tts ] && [ ! -x /tmp/tts/bin/espeak-ng ]; then
    mkdir -p /tmp/tts/bin
    for f in .tts/*.deb; do dpkg -x "$f" /tmp/tts; done
    printf '#!/bin/sh\nexec /tmp/tts/usr/bin/espeak-ng --path=/tmp/tts/usr/lib/x86_64-linux-gnu "$@"\n' > /tmp/tts/bin/espeak-ng
    ln -sf /tmp/tts/usr/bin/flite /tmp/tts/bin/flite
    ln -sf libsndfile.so.1 $L/libsndfile.so  # soundfile's py3-none-any wheel dlopens the unversioned name
    chmod +x /tmp/tts/bin/espeak-ng
  fi
  if [ -d .whl ] && [ ! -f /tmp/site/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && touch /tmp/site/.done || exit 1
  fi
  if [ -d .carry/sf ] && [ ! -e $L/libsndfile.so ]; then  # libsndfile and its codecs alone, without .tts
    for f in .carry/sf/*.deb; do dpkg -x "$f" /tmp/tts; done
    ln -sf libsndfile.so.1 $L/libsndfile.so
  fi
  mkdir -p /tmp/carry $data
  for part in .carry/p*/corpora-*.tgz; do
    [ -f "$part" ] || continue
    marker=/tmp/carry/.$(basename "$part").done
    [ -f "$marker" ] || { tar xzf "$part" -C /tmp/carry && touch "$marker"; } || exit 1
    echo "unpacked $part"
  done
  for f in .carry/p*/rirs.npy .carry/p*/prompts.txt.gz; do
    [ -f "$f" ] && cp "$f" /tmp/carry/
  done
  [ -f /tmp/carry/rirs.npy ] && cp /tmp/carry/rirs.npy $data/rirs.npy
  for f in .carry/p*/lm-text.tgz; do
    [ -f "$f" ] && [ ! -f $data/lm/.text.done ] && tar xzf "$f" -C egs/default
  done
  if [ -f .carry/m/model.pt ] && [ ! -f /tmp/init-model/model.pt ]; then
    mkdir -p /tmp/init-model && cp models/default/config.yaml models/default/tokenizer.model /tmp/init-model/ \
      && cp .carry/m/model.pt /tmp/init-model/ && echo "starting weights: /tmp/init-model"
  fi
  return 0
}

report() {  # what the run has so far, into $OUT: at most 8 files come back, so the logs go in tars
  cp $lease/log.txt "$out"/ 2>/dev/null
  (cd $exp 2>/dev/null && tar czf "$out/logs.tgz" --ignore-failed-read train.csv valid.csv sessions.jsonl \
    -C "$root" benchmarks/results/train_step_cuda.md 2>/dev/null)
  if [ -f $lease/main.done ] || [ -f $lease/done ]; then  # main.done: the main run is exported
    [ -f $exp/model/model.pt ] && split -b 15000000 -d $exp/model/model.pt "$out/model.pt.part-"
    tar czf "$out/results.tgz" --ignore-failed-read $exp/config.yaml $exp/cmvn.json $exp/train.csv $exp/valid.csv \
      $exp/curves.png $exp/sessions.jsonl $exp/model/config.yaml $exp/model/tokenizer.model \
      $data/manifests/valid.jsonl $lease/gpu.csv benchmarks/results/train_step_cuda.* 2>/dev/null
  fi
  if [ -f $lease/lm.done ] && [ ! -f $lease/lm.reported ]; then  # once: the next call gets the rest
    tar czf "$out/lm.tgz" -C /tmp lm-out -C $lease lm.log && touch $lease/lm.reported
  fi
  local also=()  # runs beside the main one (lease.sh ALSO): their logs, one tar
  for d in egs/default/exp/*/; do
    local m; m=$(basename "$d")
    [ "$m" = "$model" ] || [ "${m#lm_}" != "$m" ] && continue
    cp $lease/$m.log "$d/" 2>/dev/null
    for f in train.csv valid.csv sessions.jsonl $m.log; do [ -f "$d/$f" ] && also+=("$m/$f"); done
  done
  [ ${#also[@]} -gt 0 ] && tar czf "$out/also.tgz" -C egs/default/exp "${also[@]}"
  ls -la "$out" 2>/dev/null
}

follow() {  # follow the log for up to $1 seconds, or until the run is done
  local until=$(( $(date +%s) + $1 ))
  tail -n +1 -f $lease/log.txt & local tailer=$!
  while [ "$(date +%s)" -lt "$until" ] && [ ! -f $lease/done ]; do sleep 5; done
  kill $tailer 2>/dev/null
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  report
}

case "${1:-}" in
  setup)
    unpack
    if [ ! -f $lease/synth.started ] && [ -f /tmp/carry/prompts.txt.gz ]; then
      touch $lease/synth.started
      setsid nohup bash -c "egs/default/run.sh --stage 0 --stop-stage 0 --synth-only 1 --nj 14 \
        --prompts /tmp/carry/prompts.txt.gz > $lease/synth.log 2>&1; touch $lease/synth.done" > /dev/null 2>&1 &
      echo "synthesis started"
    fi
    if [ ! -f $lease/lm.started ] && [ -f $data/lm/.text.done ] && [ -e $L/libsndfile.so ]; then
      touch $lease/lm.started
      setsid nohup bash -c "for c in lm_large lm_sar; do
          bash egs/default/local/train_lm.sh --stage 1 --stop-stage 1 --config conf/\$c.yaml --device cuda \
            --threads 2 --out exp/\$c && bash egs/default/local/train_lm.sh --stage 3 --stop-stage 3 \
            --out exp/\$c --model /tmp/lm-out/\$c --max-mb 20
          cp egs/default/exp/\$c/train.csv egs/default/exp/\$c/valid.csv /tmp/lm-out/\$c/ 2>/dev/null
        done > $lease/lm.log 2>&1; touch $lease/lm.done" > /dev/null 2>&1 &
      echo "LM training started (log $lease/lm.log)"
    fi
    sleep 3; tail -3 $lease/synth.log 2>/dev/null; df -h /tmp | tail -1 ;;
  start)
    unpack
    python3 -c "import asr.train, soundfile, jiwer" \
      || { echo "start: the training stack does not import here; carry .whl (see the top of $0)"; exit 1; }
    end=$(( $(date +%s) + ${2:?END_S} ))
    [ -f $lease/started ] && { echo "a run was started already"; follow "${3:-0}"; exit 0; }
    touch $lease/started
    setsid nohup bash egs/default/local/lease.sh "$end" "$model" > $lease/log.txt 2>&1 &
    sleep 5
    follow "${3:-0}" ;;
  wait)
    follow "${2:?SECONDS}" ;;
  fetch)  # a model directory trained beside the main run, model.pt in parts under 16 MB
    d=egs/default/exp/${2:?MODEL}/model
    mkdir -p "$out/$2" && cp "$d/config.yaml" "$d/tokenizer.model" "$out/$2/" \
      && split -b 15000000 -d "$d/model.pt" "$out/$2/model.pt.part-" && ls -la "$out/$2" ;;
  *)
    sed -n 2,20p "$0"; exit 2 ;;
esac
