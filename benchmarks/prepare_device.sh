#!/usr/bin/env bash
# Builds .bench/ (git-ignored) for benchmarks/device_check.sh on a bare GPU machine (no network; Python 3.12)
# from the data folders given and the package registry, then checks it and prints the `run` call.
#   bash benchmarks/prepare_device.sh [FARSTAIL_DIR [TOKENIZER_DIR]]   # build .bench/, then check it
#   bash benchmarks/prepare_device.sh --check                          # check only (the pre-flight)
# Defaults: ../shared/data/farstail and ../shared/data/parsbert-v1 beside the clone, when they exist.
# The call carries 3 paths, about 6 MB (at most 8 paths and 64 MiB): .bench/data/farstail (FarsTail's three
# files, 7,266 training pairs), .bench/data/parsbert-v1 (the tokenizer; the random ParsBERT-shaped model is
# built there), .bench/whl (cp312 wheels the image lacks, unpacked there only when missing: soundfile, cffi,
# pycparser for SER's audio; accelerate, psutil for Trainer). Not audiomentations: the call makes no augmented
# copies (--no-balance), and its librosa needs numba, whose llvmlite wheel alone is 57 MB.
set -uo pipefail
cd "$(dirname "$0")/.."
B=.bench
WHEELS="soundfile==0.14.0 cffi==2.0.0 pycparser accelerate psutil"
if [ "${1:-}" != "--check" ]; then
  farstail=${1:-../shared/data/farstail}; tok=${2:-../shared/data/parsbert-v1}
  mkdir -p $B/data $B/whl
  for pair in "farstail:$farstail" "parsbert-v1:$tok"; do
    name=${pair%%:*}; src=${pair#*:}
    if [ -d "$src" ]; then rm -rf "$B/data/$name" && cp -r "$src" "$B/data/$name"
    else echo "missing: $src (give the $name folder as an argument: bash benchmarks/prepare_device.sh FARSTAIL_DIR TOKENIZER_DIR)"; fi
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d $B/whl $WHEELS || echo "missing: some wheels could not be downloaded (see above)"
fi

# The pre-flight: every carried file the call reads (the tracked ones travel with the tree), and the carry's size.
bad=0
need() { [ -e "$1" ] || { echo "missing: $1 ($2)"; bad=1; }; }
for f in Train-word.csv Val-word.csv Test-word.csv; do need "$B/data/farstail/$f" "FarsTail: NLI steps and the recipe"; done
need "$B/data/parsbert-v1/vocab.txt" "the ParsBERT tokenizer: NLI steps and the recipe"
for w in $WHEELS; do need $B/whl/"${w%%=*}"-*.whl "the device lacks it: ${w%%=*}"; done
size=$(du -scb $B/data/farstail $B/data/parsbert-v1 $B/whl 2>/dev/null | tail -1 | cut -f1)
echo "carry: $B/data/farstail $B/data/parsbert-v1 $B/whl: $(( size / 1048576 )) MiB (limit 64 MiB in all)"
[ "$size" -lt $(( 60 * 1048576 )) ] || { echo "too large: the carry must stay under 64 MiB"; bad=1; }
if [ $bad = 0 ]; then
  echo "ready. One device call: command 'bash benchmarks/device_check.sh', carry" \
       "[\"$B/data/farstail\", \"$B/data/parsbert-v1\", \"$B/whl\"], timeout_s 540"
else
  echo "not ready: the device check would warn and skip what the missing pieces serve"
fi
exit $bad
