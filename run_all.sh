#!/usr/bin/env bash
# Reproduce every table of the study: the NLI experiments and SER under three protocols, then summary.md.
#
#   bash run_all.sh                      # the real study (needs ShEMO: --shemo DIR or SHEMO_DIR)
#   bash run_all.sh --smoke              # every experiment end to end, offline, tiny models, minutes on a CPU
#   options: --seeds N (seeds 0..N-1, tables show mean ± std)  --only nli|ser  --shemo DIR  --out DIR
#            --ser-protocols NAME,... (default: every protocol python -m ser.study --list gives)
#
# The experiment lists live in nli/study.py and ser/study.py (python -m nli.study --list).
# Runs go to OUT/nli/<experiment>/seed<k>/ and OUT/ser/<protocol>/seed<k>/ (OUT: runs/, or runs-smoke/ with --smoke).
# Every run is started with --resume: a finished run with the same arguments is skipped, an
# interrupted one continues from its last finished epoch. A failing run stops the script.
set -euo pipefail
cd "$(dirname "$0")"

smoke=0; seeds=1; only=""; out=""; shemo="${SHEMO_DIR:-}"; ser_protocols=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --seeds) seeds="${2:?--seeds needs a number}"; shift ;;
    --only) only="${2:?--only needs nli or ser}"; shift ;;
    --shemo) shemo="${2:?--shemo needs a folder}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --ser-protocols) ser_protocols="${2:?--ser-protocols needs a comma-separated list}"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in ""|nli|ser) ;; *) echo "run_all.sh: --only takes nli or ser" >&2; exit 2 ;; esac
[[ "$seeds" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: --seeds takes a positive number" >&2; exit 2; }
[ -n "$out" ] || out=$([ $smoke = 1 ] && echo runs-smoke || echo runs)
export PYTHONUNBUFFERED=1

# The experiments, from their one source: name<TAB>flags per line.
nli_names=(); nli_flags=(); ser_names=(); ser_flags=()
while IFS=$'\t' read -r name flags; do nli_names+=("$name"); nli_flags+=("$flags"); done < <(python -m nli.study --list)
while IFS=$'\t' read -r name flags; do
  if [ -z "$ser_protocols" ] || [[ ",$ser_protocols," == *",$name,"* ]]; then ser_names+=("$name"); ser_flags+=("$flags"); fi
done < <(python -m ser.study --list)
curve_of=$(python -c "from nli.study import CURVE_OF; print(CURVE_OF)")
known=$(python -m ser.study --list | cut -f1 | paste -sd, -)
for name in ${ser_protocols//,/ }; do
  [[ ",$known," == *",$name,"* ]] || { echo "run_all.sh: --ser-protocols: unknown protocol $name (known: $known)" >&2; exit 2; }
done

if [ $smoke = 1 ]; then
  # Tiny models built from configs and generated data, passed the way a user passes real ones.
  inputs="$out/inputs"
  if [ ! -e "$inputs/done" ]; then
    echo "== building tiny models and generated data in $inputs"
    python -m nli.synthetic --data "$inputs/farstail" --model "$inputs/tiny-bert" --rows 240 80 80
    python -m ser.synthetic --data "$inputs/shemo" --model "$inputs/tiny-hubert" --per-class 8 --uneven
    touch "$inputs/done"
  fi
  nli_args=(--model "$inputs/tiny-bert" --data-dir "$inputs/farstail" --epochs 4 --lr 3e-3)
  curve_args=(--data-dir "$inputs/farstail" --importance-batches 4 --fractions 0.2,0.4,0.6 --seeds 2)
  ser_args=(--model "$inputs/tiny-hubert" --data-dir "$inputs/shemo" --epochs 2 --lr 1e-3)
else
  nli_args=()  # the study's model and hyperparameters are the defaults; FarsTail downloads to data/farstail
  curve_args=()
  if [ "$only" != nli ]; then
    if [ -z "$shemo" ] || [ ! -d "$shemo" ]; then
      echo "run_all.sh: ShEMO not found${shemo:+ at $shemo}. Download female.zip and male.zip from https://github.com/pariajm/sharif-emotional-speech-dataset," >&2
      echo "unzip it, and point --shemo DIR (or SHEMO_DIR) at the folder holding its .wav files;" >&2
      echo "or run only the NLI half with --only nli. Nothing was trained." >&2
      exit 2
    fi
    # usable ShEMO-named audio (readable headers, at least two emotions) before hours of NLI training
    if ! python -m ser.data --check "$shemo"; then
      echo "run_all.sh: $shemo does not hold usable ShEMO audio (see the line above). Nothing was trained." >&2
      exit 2
    fi
  fi
  ser_args=(--data-dir "$shemo")
fi

total=0
[ "$only" != ser ] && total=$((total + (${#nli_names[@]} + 1) * seeds))  # +1: the pruning curve
[ "$only" != nli ] && total=$((total + ${#ser_names[@]} * seeds))
n=0

run() {  # run NAME DIR COMMAND...: one experiment, stopping the script if it fails
  local name=$1 dir=$2; shift 2
  n=$((n + 1))
  echo "== [$n/$total] $name -> $dir"
  if ! "$@" --out "$dir" --resume; then
    echo "run_all.sh: experiment $name failed; see $dir/train.log" >&2
    exit 1
  fi
}

for ((seed = 0; seed < seeds; seed++)); do
  if [ "$only" != ser ]; then
    for i in "${!nli_names[@]}"; do
      # shellcheck disable=SC2086  # the flags are meant to split into words
      run "nli ${nli_names[$i]} seed $seed" "$out/nli/${nli_names[$i]}/seed$seed" \
        python -m nli.train "${nli_args[@]}" ${nli_flags[$i]} --seed "$seed"
      if [ "${nli_names[$i]}" = "$curve_of" ]; then  # heads removed from the fine-tuned model, no retraining
        run "nli pruning curve seed $seed" "$out/nli/$curve_of/seed$seed/prune_curve" \
          python -m nli.prune_curve --model "$out/nli/$curve_of/seed$seed/model" "${curve_args[@]}" --iterative
      fi
    done
  fi
  if [ "$only" != nli ]; then
    for i in "${!ser_names[@]}"; do
      # shellcheck disable=SC2086
      run "ser ${ser_names[$i]} seed $seed" "$out/ser/${ser_names[$i]}/seed$seed" \
        python -m ser.train "${ser_args[@]}" ${ser_flags[$i]} --seed "$seed" --cache-dir "$out/ser/augmented-cache"
    done
  fi
done

tasks=()
[ "$only" != ser ] && tasks+=(--task nli.study)
[ "$only" != nli ] && tasks+=(--task ser.study)
python -m common.summary --out "$out" --seeds "$seeds" "${tasks[@]}" $([ $smoke = 1 ] && echo --smoke)
echo "== done: $out/summary.md"
