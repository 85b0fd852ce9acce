#!/usr/bin/env bash
# One call on a lent GPU machine: correctness on CUDA, then our training throughput with and
# without CUDA graphs beside the study's recipe (peer baseline) on the same card, all figures
# under $OUT with one ratio table (table.md). Prepared on the CPU machine as NOTES.md
# ("How to run the GPU check") says: .bench/ holds the data, the peer scripts and the wheels.
#   QUICK=1 OUT=/tmp/dc bash benchmarks/device_check.sh   # a short dry run of the same steps (works on a CPU)
# Sizes: PAIRS (default 2400) and CLIPS (400) for the short runs; FULL=0 skips the whole-experiment runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}; mkdir -p "$OUT"
if ! python3 -c "import soundfile" 2>/dev/null; then   # soundfile and cffi: missing on the GPU image
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .bench/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PEER_DATA=${PEER_DATA:-$PWD/.bench/data}
quick=${QUICK:-0}; full=${FULL:-1}
pairs=${PAIRS:-$([ "$quick" = 1 ] && echo 32 || echo 2400)}
clips=${CLIPS:-$([ "$quick" = 1 ] && echo 24 || echo 400)}
on=$(python3 -c "import torch; print('on' if torch.cuda.is_available() else 'auto')")  # graphs: on where CUDA is
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', torch.cuda.device_count())" | tee "$OUT/versions.txt"
step() { echo "== $1 ($(date +%T))" | tee -a "$OUT/steps.log"; }

step "1. CUDA-only tests (graph replay vs eager, fresh randomness per replay, resume under graphs)"
python3 -m pytest -q -s tests/test_cuda.py > "$OUT/cuda_tests.log" 2>&1; echo "cuda tests exit $?" | tee -a "$OUT/steps.log"

step "2. every experiment end to end on CUDA (bf16, graphs on by auto)"
bash run_all.sh --smoke --out /tmp/smoke-cuda > "$OUT/smoke.log" 2>&1; echo "smoke exit $?" | tee -a "$OUT/steps.log"
cp /tmp/smoke-cuda/summary.md "$OUT/smoke_summary.md" 2>/dev/null
grep -h "CUDA graphs" /tmp/smoke-cuda/nli/*/seed0/train.log /tmp/smoke-cuda/ser/*/seed0/train.log 2>/dev/null | sort | uniq -c > "$OUT/smoke_graphs.txt"

step "3. short runs: $pairs pairs / $clips clips, one epoch, graphs on and off"
nli() { python3 -m benchmarks.nli_speed --data-dir "$PEER_DATA/farstail" --tokenizer "$PEER_DATA/parsbert-v1" "$@"; }
nli --pairs "$pairs" --json "$OUT/nli_graphs.json" -- --cuda-graphs "$on" > "$OUT/nli_graphs.log" 2>&1
nli --pairs "$pairs" --json "$OUT/nli_eager.json" -- --cuda-graphs off > "$OUT/nli_eager.log" 2>&1
python3 -m benchmarks.ser_speed --clips "$clips" --json "$OUT/ser_graphs.json" -- --cuda-graphs "$on" > "$OUT/ser_graphs.log" 2>&1
python3 -m benchmarks.ser_speed --clips "$clips" --json "$OUT/ser_eager.json" -- --cuda-graphs off > "$OUT/ser_eager.log" 2>&1

if [ "$full" = 1 ] && [ "$quick" != 1 ]; then
  step "4. whole experiments: NLI 3 epochs over all 7266 pairs, SER 5 epochs over $clips clips (graphs on)"
  nli --pairs 7266 --epochs 3 --json "$OUT/nli_full_3epochs.json" -- --cuda-graphs "$on" > "$OUT/nli_full.log" 2>&1
  python3 -m benchmarks.ser_speed --clips "$clips" --epochs 5 --json "$OUT/ser_full_5epochs.json" -- --cuda-graphs "$on" \
    > "$OUT/ser_full.log" 2>&1
fi

if [ "$quick" != 1 ]; then
  step "5. the study's recipe on the same card (Trainer fp32 pad 200; SER batch 2 fp32)"
  python3 .bench/peer/peer_baseline.py --recipes-only --nli-pairs "$pairs" --ser-steps $((clips * 2 / 5)) \
    > "$OUT/peer.log" 2>&1
fi
step "6. one run over two processes (torchrun, DDP), if this machine has two GPUs"
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m nli.train --model .bench/parsbert-base-random \
    --data-dir "$PEER_DATA/farstail" --limit "$pairs" --epochs 1 --out /tmp/ddp-check --overwrite > "$OUT/ddp.log" 2>&1
  echo "ddp exit $?" | tee -a "$OUT/steps.log"; cp /tmp/ddp-check/metrics.json "$OUT/ddp_metrics.json" 2>/dev/null
else
  echo "only one GPU: the two-process job was not run" | tee -a "$OUT/steps.log"
fi
step "7. table"
python3 -m benchmarks.table "$OUT"
tail -n 3 "$OUT"/cuda_tests.log
