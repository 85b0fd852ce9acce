#!/usr/bin/env bash
# One call on a lent GPU machine, at most about 480 s on one H200 or H100 (Python 3.12, torch
# 2.11.0+cu130, transformers 5.17; no soundfile, audiomentations or network; maybe no `python`
# or pytest): the study's recipe first (the denominator of every ratio), then the CUDA tests,
# then our loops with CUDA graphs on and off: one whole FarsTail epoch of NLI at batch 16 and
# SER at the study's batch 2. Every step runs under its own timeout and within an overall budget,
# writes its figures under $OUT as it goes, and the last one makes table.md (ratios with
# warm-up, steady, and a projected whole experiment). Prepared on the CPU machine as NOTES.md
# ("How to run the GPU check") says: .bench/ holds the data, the peer scripts and the wheels.
#   QUICK=1 OUT=/tmp/dc bash benchmarks/device_check.sh   # every step, small sizes (works on a CPU)
# Sizes: PAIRS (default 7266: one FarsTail epoch), CLIPS (400), PEER_PAIRS (2400), PEER_STEPS (200);
# BUDGET (default 470 s) is the time all steps together may take. What comes back from a device
# call is at most 8 files: $OUT gets the 4 JSON figures, peer.log, cuda_tests.log, table.md and
# steps.log (the steps, versions, and the end of each run's output; whole logs stay in $LOGS).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}; mkdir -p "$OUT"
LOGS=${LOGS:-/tmp/device-check-logs}; mkdir -p "$LOGS"
quick=${QUICK:-0}
budget=${BUDGET:-470}
began=$(date +%s)
pairs=${PAIRS:-$([ "$quick" = 1 ] && echo 32 || echo 7266)}
clips=${CLIPS:-$([ "$quick" = 1 ] && echo 24 || echo 400)}
peer_pairs=${PEER_PAIRS:-$([ "$quick" = 1 ] && echo 32 || echo 2400)}
peer_steps=${PEER_STEPS:-$([ "$quick" = 1 ] && echo 4 || echo 200)}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PEER_DATA=${PEER_DATA:-$PWD/.bench/data}

# The bare machine: python3 may be all there is; soundfile and cffi come as carried wheels,
# unpacked without pip (a wheel is a zip file).
if ! command -v python >/dev/null 2>&1; then
  mkdir -p /tmp/shim && ln -sf "$(command -v python3)" /tmp/shim/python && export PATH=/tmp/shim:$PATH
fi
if ! python3 -c "import soundfile" 2>/dev/null; then
  mkdir -p /tmp/site
  for w in .bench/whl/*.whl; do python3 -m zipfile -e "$w" /tmp/site || exit 1; done
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee -a "$OUT/steps.log"
on=$(python3 -c "import torch; print('on' if torch.cuda.is_available() else 'auto')")  # graphs: on where CUDA is

# step NAME SECONDS LOG COMMAND...: run it under `timeout`, given no more than the budget has left;
# the end of its log goes into steps.log
step() {
  local name=$1 limit=$2 log=$3 left status; shift 3
  left=$(( budget - ($(date +%s) - began) - 15 ))  # 15 s kept for the table
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, the budget is spent" | tee -a "$OUT/steps.log"; return; fi
  echo "== $name (at $(( $(date +%s) - began )) s, up to $limit s)" | tee -a "$OUT/steps.log"
  timeout --kill-after 10 "$limit" "$@"; status=$?
  echo "   exit $status$([ $status = 124 ] && echo ' (timed out)') after $(( $(date +%s) - began )) s" | tee -a "$OUT/steps.log"
  tail -n 12 "$log" 2>/dev/null | sed 's/^/   | /' >> "$OUT/steps.log"
}

step "1. the study's recipe on this card (Trainer fp32 pad 200; SER batch 2 fp32)" 150 "$OUT/peer.log" \
  bash -c "python3 .bench/peer/peer_baseline.py --recipes-only --nli-pairs $peer_pairs --ser-steps $peer_steps > '$OUT/peer.log' 2>&1"
step "2. CUDA tests (graphs vs eager, fresh randomness per replay, resume across modes, failed capture)" 170 \
  "$OUT/cuda_tests.log" bash -c "python3 -m pytest -q -x -p no:cacheprovider -o addopts='' tests/test_cuda.py > '$OUT/cuda_tests.log' 2>&1"
nli="python3 -m benchmarks.nli_speed --data-dir '$PEER_DATA/farstail' --tokenizer '$PEER_DATA/parsbert-v1' --pairs $pairs"
ser="python3 -m benchmarks.ser_speed --clips $clips"
step "3. NLI, $pairs pairs, batch 16, graphs $on" 110 "$LOGS/nli_graphs.log" \
  bash -c "$nli --json '$OUT/nli_graphs.json' -- --cuda-graphs $on > '$LOGS/nli_graphs.log' 2>&1"
step "4. SER, $clips clips, batch 2, graphs $on" 90 "$LOGS/ser_graphs.log" \
  bash -c "$ser --json '$OUT/ser_graphs.json' -- --cuda-graphs $on > '$LOGS/ser_graphs.log' 2>&1"
step "5. NLI, $pairs pairs, batch 16, graphs off" 110 "$LOGS/nli_eager.log" \
  bash -c "$nli --json '$OUT/nli_eager.json' -- --cuda-graphs off > '$LOGS/nli_eager.log' 2>&1"
step "6. SER, $clips clips, batch 2, graphs off" 90 "$LOGS/ser_eager.log" \
  bash -c "$ser --json '$OUT/ser_eager.json' -- --cuda-graphs off > '$LOGS/ser_eager.log' 2>&1"
echo "== 7. table (at $(( $(date +%s) - began )) s)" | tee -a "$OUT/steps.log"
grep -h "CUDA graphs" "$LOGS"/*_graphs.log 2>/dev/null | sort | uniq -c | tee -a "$OUT/steps.log"
python3 -m benchmarks.table "$OUT"
tail -n 3 "$OUT/cuda_tests.log" 2>/dev/null
