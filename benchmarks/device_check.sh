#!/usr/bin/env bash
# One call on a lent GPU machine (Python 3.12, torch 2.11.0+cu130, transformers 5.17; no network; maybe no
# `python`, pip or pytest), prepared by benchmarks/prepare_device.sh; steps: docs/speed.md, "The GPU check".
#   QUICK=1 OUT=/tmp/dc bash benchmarks/device_check.sh   # every step, small sizes (works on a CPU)
# Sizes: PAIRS (default 7266), CLIPS (400); BUDGET (470 s), TESTS_MAX (150 s); STEP_SCALE (default 1)
# multiplies every step's time limit; NLI_MODEL and SER_MODEL time the given model folders instead of
# the full-size random ones (a CPU dry run: tiny models from nli/ser.synthetic). $OUT gets the JSON
# figures, table.md, steps.log (steps, warnings, each log's end) and cuda_tests.log; whole logs: $LOGS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}; mkdir -p "$OUT"
LOGS=${LOGS:-/tmp/device-check-logs}; mkdir -p "$LOGS"
quick=${QUICK:-0}
budget=${BUDGET:-470}
began=$(date +%s)
pairs=${PAIRS:-$([ "$quick" = 1 ] && echo 32 || echo 7266)}
clips=${CLIPS:-$([ "$quick" = 1 ] && echo 24 || echo 400)}
data=${BENCH_DATA:-$PWD/.bench/data}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
warn() { echo "warning: $*" | tee -a "$OUT/steps.log"; }

if ! command -v python3 >/dev/null 2>&1; then warn "no python3 on this machine: nothing can run"; exit 1; fi
if ! command -v python >/dev/null 2>&1; then  # some scripts spawn `python`
  mkdir -p /tmp/shim && ln -sf "$(command -v python3)" /tmp/shim/python && export PATH=/tmp/shim:$PATH
fi

# 1. The probe (one process): unpack each carried wheel whose package is missing (a wheel is a
# zip file: no pip needed), then print versions, the card and what is missing, as shell lines.
mkdir -p /tmp/site && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 - "$PWD/.bench/whl" > "$LOGS/probe.sh" 2>"$LOGS/probe.err" <<'EOF'
import importlib, importlib.metadata as md, pathlib, sys, zipfile
for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        md.version(w.name.split("-")[0].replace("_", "-"))
    except md.PackageNotFoundError:
        zipfile.ZipFile(w).extractall("/tmp/site")
importlib.invalidate_caches()
import torch, transformers
cuda = torch.cuda.is_available()
print(f"versions='python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0) if cuda else 'cpu'}'")
print(f"graphs={'on' if cuda else 'auto'}")  # graphs on where CUDA is (auto is off on a CPU)
for name in ("soundfile", "accelerate", "pytest"):
    try:
        importlib.import_module(name); print(f"have_{name}=1")
    except Exception as e:
        print(f"have_{name}=0; why_{name}='{type(e).__name__}'")
EOF
if [ -s "$LOGS/probe.sh" ]; then . "$LOGS/probe.sh"; else
  warn "the probe failed: $(tail -n 1 "$LOGS/probe.err")"; versions=unknown graphs=auto have_soundfile=0 have_accelerate=0 have_pytest=0
fi
echo "$versions" | tee -a "$OUT/steps.log"
[ "$have_soundfile" = 1 ] || warn "soundfile does not import (no wheel in .bench/whl?): the SER steps will fail"
[ "$have_accelerate" = 1 ] || warn "accelerate does not import: the Trainer recipe step is skipped"
[ "$have_pytest" = 1 ] || warn "pytest does not import: the CUDA tests are skipped"
for f in farstail/Train-word.csv parsbert-v1/vocab.txt; do
  [ -e "$data/$f" ] || warn "$data/$f is missing (run benchmarks/prepare_device.sh): the NLI steps will fail"
done

# step NAME SECONDS LOG COMMAND...: run under `timeout`, given no more than the budget has left
# (15 s kept for the table); the end of its log goes into steps.log.
step() {
  local name=$1 limit=$(( $2 * ${STEP_SCALE:-1} )) log=$3 left status; shift 3
  left=$(( budget - ($(date +%s) - began) - 15 ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, the budget is spent" | tee -a "$OUT/steps.log"; return; fi
  echo "== $name (at $(( $(date +%s) - began )) s, up to $limit s)" | tee -a "$OUT/steps.log"
  timeout --kill-after 10 "$limit" "$@" > "$log" 2>&1; status=$?
  echo "   exit $status$([ $status = 124 ] && echo ' (timed out)') after $(( $(date +%s) - began )) s" | tee -a "$OUT/steps.log"
  tail -n 8 "$log" 2>/dev/null | sed 's/^/   | /' >> "$OUT/steps.log"
}

model=${NLI_MODEL:-.bench/parsbert-base-random}
nli="python3 -m benchmarks.nli_speed --data-dir $data/farstail --tokenizer $data/parsbert-v1 --model $model --pairs $pairs"
ser="python3 -m benchmarks.ser_speed --clips $clips ${SER_MODEL:+--model $SER_MODEL}"
limit=$([ "$pairs" -lt 7266 ] && echo "--limit $pairs")
[ -n "${NLI_MODEL:-}" ] || step "2. the ParsBERT-shaped model (random weights, vocab 100000)" 60 "$LOGS/model.log" \
  python3 -c "from pathlib import Path; from benchmarks.nli_speed import parsbert_shaped; parsbert_shaped(Path('$data/parsbert-v1'))"
if [ "$have_accelerate" = 1 ]; then
  step "2a. the study's NLI recipe: Trainer, fp32, pad 200, batch 16, $pairs pairs, 1 epoch" 130 "$LOGS/nli_recipe.log" \
    bash -c "rm -rf $LOGS/recipe && python3 -m benchmarks.trainer_recipe --model $model --data-dir $data/farstail \
      --out $LOGS/recipe --epochs 1 $limit && cp $LOGS/recipe/metrics.json $OUT/nli_recipe.json"
fi
step "2b. NLI ours, $pairs pairs, batch 16, graphs $graphs" 100 "$LOGS/nli_graphs.log" \
  $nli --json "$OUT/nli_graphs.json" -- --cuda-graphs $graphs
step "3a. SER the recipe's way (ours eager, fp32), $clips clips, batch 2" 80 "$LOGS/ser_recipe.log" \
  $ser --json "$OUT/ser_recipe.json" -- --cuda-graphs off --amp off
step "3b. SER ours, $clips clips, batch 2, graphs $graphs" 80 "$LOGS/ser_graphs.log" \
  $ser --json "$OUT/ser_graphs.json" -- --cuda-graphs $graphs
step "4a. NLI ours, $pairs pairs, batch 16, graphs off" 80 "$LOGS/nli_eager.log" \
  $nli --json "$OUT/nli_eager.json" -- --cuda-graphs off
step "4b. SER ours, $clips clips, batch 2, graphs off" 70 "$LOGS/ser_eager.log" \
  $ser --json "$OUT/ser_eager.json" -- --cuda-graphs off
if [ "$have_pytest" = 1 ]; then
  step "5. CUDA tests (graphs vs eager, fresh randomness per replay, resume across modes, failed capture)" \
    "${TESTS_MAX:-150}" "$OUT/cuda_tests.log" \
    python3 -m pytest -q -rfE --durations=10 -p no:cacheprovider -p no:xdist -o addopts='' tests/test_cuda.py
fi
echo "== 6. table (at $(( $(date +%s) - began )) s)" | tee -a "$OUT/steps.log"
grep -h "CUDA graphs" "$LOGS"/*_graphs.log 2>/dev/null | sort | uniq -c | tee -a "$OUT/steps.log"
python3 -m benchmarks.table "$OUT" || warn "the table failed; the JSON figures are in $OUT"
tail -n 3 "$OUT/cuda_tests.log" 2>/dev/null
echo "done in $(( $(date +%s) - began )) s" | tee -a "$OUT/steps.log"
