#!/usr/bin/env bash
# One call on a lent GPU machine: the whole pipeline on CUDA (smoke run, bf16), then our training
# throughput beside the peer baseline's, all figures written under $OUT. Prepared on the CPU
# machine as NOTES.md ("How to run the GPU check") says: .bench/ holds the data and the wheels.
#   QUICK=1 bash benchmarks/device_check.sh    # a short dry run of the same steps (works on a CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}; mkdir -p "$OUT"
if ! python3 -c "import soundfile" 2>/dev/null; then   # soundfile and cffi: missing on the GPU image
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .bench/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PEER_DATA=${PEER_DATA:-$PWD/.bench/data}
quick=${QUICK:-0}
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee "$OUT/versions.txt"

# 1. correctness on CUDA: every experiment end to end (device auto -> cuda, amp auto -> bf16)
bash run_all.sh --smoke --out /tmp/smoke-cuda > "$OUT/smoke.log" 2>&1; echo "smoke exit $?" | tee -a "$OUT/smoke.log"
cp /tmp/smoke-cuda/summary.md "$OUT/smoke_summary.md" 2>/dev/null

# 2. our loops, then the peer baseline, on the same card in the same call
pairs=$([ "$quick" = 1 ] && echo 32 || echo 2400)
clips=$([ "$quick" = 1 ] && echo 24 || echo 400)
python3 -m benchmarks.nli_speed --data-dir "$PEER_DATA/farstail" --tokenizer "$PEER_DATA/parsbert-v1" \
  --pairs "$pairs" --json "$OUT/nli_ours.json" > "$OUT/nli_ours.log" 2>&1
python3 -m benchmarks.ser_speed --clips "$clips" --json "$OUT/ser_ours_b2.json" > "$OUT/ser_ours.log" 2>&1
if [ "$quick" != 1 ]; then
  python3 .bench/peer/peer_baseline.py > "$OUT/peer.log" 2>&1
fi
tail -n 12 "$OUT"/*.json "$OUT/peer.log" 2>/dev/null || true
