#!/usr/bin/env bash
# Reproduce every table of the study: the NLI experiments and SER under three protocols, then summary.md.
#
#   bash run_all.sh                      # the real study (needs ShEMO: --shemo DIR or SHEMO_DIR)
#   bash run_all.sh --smoke              # every experiment end to end, offline, tiny models, minutes on a CPU
#   options: --seeds N (seeds 0..N-1, tables show mean ± std)  --only nli|ser  --shemo DIR  --out DIR
#            --ser-protocols NAME,... (default: every protocol python -m ser.study --list gives)
#            --gpus 0,1,2,3 (independent experiments side by side, one per GPU)  --slots N (N side by side, same device)
#
# The experiment lists live in nli/study.py and ser/study.py (python -m nli.study --list).
# Runs go to OUT/nli/<experiment>/seed<k>/ and OUT/ser/<protocol>/seed<k>/ (OUT: runs/, or runs-smoke/ with --smoke).
# Every run is started with --resume: a finished run with the same arguments is skipped, an
# interrupted one continues from its last finished epoch. A failing run stops the script.
set -euo pipefail
cd "$(dirname "$0")"

smoke=0; seeds=1; only=""; out=""; shemo="${SHEMO_DIR:-}"; ser_protocols=""; gpus=(); slots=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --seeds) seeds="${2:?--seeds needs a number}"; shift ;;
    --only) only="${2:?--only needs nli or ser}"; shift ;;
    --shemo) shemo="${2:?--shemo needs a folder}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --ser-protocols) ser_protocols="${2:?--ser-protocols needs a comma-separated list}"; shift ;;
    --gpus) IFS=, read -ra gpus <<< "${2:?--gpus needs GPU ids, like 0,1,2,3}"; shift ;;
    --slots) slots="${2:?--slots needs a number}"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$only" in ""|nli|ser) ;; *) echo "run_all.sh: --only takes nli or ser" >&2; exit 2 ;; esac
[[ "$seeds" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: --seeds takes a positive number" >&2; exit 2; }
[[ "$slots" =~ ^[1-9][0-9]*$ ]] || { echo "run_all.sh: --slots takes a positive number" >&2; exit 2; }
for g in "${gpus[@]}"; do [[ "$g" =~ ^[0-9]+$ ]] || { echo "run_all.sh: --gpus takes GPU ids, like 0,1,2,3" >&2; exit 2; }; done
[ ${#gpus[@]} -gt 0 ] && slots=${#gpus[@]}  # one job per GPU
if [ "$slots" -gt 1 ] && [ ${#gpus[@]} = 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  # jobs sharing the CPU: split its cores between them instead of oversubscribing them
  # (measured on 2 cores, the smoke run with 2 slots: 2m07 at 2 threads per job, 0m58 at 1)
  export OMP_NUM_THREADS=$(( $(nproc) / slots > 0 ? $(nproc) / slots : 1 ))
fi
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

# The jobs, in order: a name, an output folder, a command, and the job it must wait for (-1: none).
J_NAME=(); J_DIR=(); J_CMD=(); J_AFTER=()
add() { J_NAME+=("$1"); J_DIR+=("$2"); J_CMD+=("$3"); J_AFTER+=("${4:--1}"); }
q() { printf '%q ' "$@"; }  # a quoted command line for bash -c
for ((seed = 0; seed < seeds; seed++)); do
  if [ "$only" != ser ]; then
    for i in "${!nli_names[@]}"; do
      dir="$out/nli/${nli_names[$i]}/seed$seed"
      # ${nli_flags[$i]} unquoted on purpose: the flags split into words
      add "nli ${nli_names[$i]} seed $seed" "$dir" \
        "$(q python -m nli.train "${nli_args[@]}") ${nli_flags[$i]} $(q --seed "$seed" --out "$dir" --resume)"
      if [ "${nli_names[$i]}" = "$curve_of" ]; then  # heads removed from the fine-tuned model, no retraining
        add "nli pruning curve seed $seed" "$dir/prune_curve" "$(q python -m nli.prune_curve --model "$dir/model" \
          "${curve_args[@]}" --iterative --out "$dir/prune_curve" --resume)" $((${#J_NAME[@]} - 1))
      fi
    done
  fi
  if [ "$only" != nli ]; then
    for i in "${!ser_names[@]}"; do
      dir="$out/ser/${ser_names[$i]}/seed$seed"
      add "ser ${ser_names[$i]} seed $seed" "$dir" "$(q python -m ser.train "${ser_args[@]}") ${ser_flags[$i]} \
$(q --seed "$seed" --cache-dir "$out/ser/augmented-cache" --out "$dir" --resume)"
    done
  fi
done
total=${#J_NAME[@]}

start() {  # start JOB SLOT: its header line, then the command on the slot's GPU (if --gpus)
  local gpu=${gpus[$2]:-}
  echo "== [$(($1 + 1))/$total] ${J_NAME[$1]} -> ${J_DIR[$1]}${gpu:+ (GPU $gpu)}"
  if [ -n "$gpu" ]; then CUDA_VISIBLE_DEVICES=$gpu bash -c "${J_CMD[$1]}"; else bash -c "${J_CMD[$1]}"; fi
}
failed() {  # failed JOB [CONSOLE-LOG]: name it and its log
  echo "run_all.sh: experiment ${J_NAME[$1]} failed; see ${J_DIR[$1]}/train.log" >&2
  if [ -n "${2:-}" ]; then grep -h '^error:' "$2" | tail -n 1 >&2; echo "  (its console output: $2)" >&2; fi
}

if [ "$slots" -le 1 ]; then  # one job at a time, in order, output on this terminal; stop at the first failure
  for ((j = 0; j < total; j++)); do
    start "$j" 0 || { failed "$j"; exit 1; }
  done
else  # up to $slots jobs side by side, each output in $out/logs/; a failure starts nothing new but stops no running job
  mkdir -p "$out/logs"
  declare -A slot_of job_of  # pid -> slot, pid -> job
  free=(); for ((k = 0; k < slots; k++)); do free+=("$k"); done
  state=(); for ((j = 0; j < total; j++)); do state+=(waiting); done
  bad=()
  while :; do
    next=-1
    if [ ${#bad[@]} = 0 ] && [ ${#free[@]} -gt 0 ]; then
      for ((j = 0; j < total; j++)); do
        dep=${J_AFTER[$j]}
        if [ "${state[$j]}" = waiting ] && { [ "$dep" -lt 0 ] || [ "${state[$dep]}" = ok ]; }; then next=$j; break; fi
      done
    fi
    if [ "$next" -ge 0 ]; then
      slot=${free[0]}; free=("${free[@]:1}")
      logf="$out/logs/$(echo "${J_NAME[$next]}" | tr ' ' '-').log"
      echo "== [$((next + 1))/$total] ${J_NAME[$next]} -> ${J_DIR[$next]}${gpus[$slot]:+ (GPU ${gpus[$slot]})}; output in $logf"
      start "$next" "$slot" > "$logf" 2>&1 &
      slot_of[$!]=$slot; job_of[$!]=$next; state[$next]=running
      continue
    fi
    [ ${#slot_of[@]} = 0 ] && break  # nothing running, nothing startable
    pid=""; status=0
    wait -n -p pid || status=$?
    j=${job_of[$pid]}; free+=("${slot_of[$pid]}"); unset "slot_of[$pid]" "job_of[$pid]"
    if [ "$status" = 0 ]; then
      state[$j]=ok; echo "== done: ${J_NAME[$j]}"
    else
      state[$j]=failed; bad+=("$j"); failed "$j" "$out/logs/$(echo "${J_NAME[$j]}" | tr ' ' '-').log"
    fi
  done
  [ ${#bad[@]} = 0 ] || { echo "run_all.sh: ${#bad[@]} experiment(s) failed; the others finished or were not started" >&2; exit 1; }
fi

tasks=()
[ "$only" != ser ] && tasks+=(--task nli.study)
[ "$only" != nli ] && tasks+=(--task ser.study)
python -m common.summary --out "$out" --seeds "$seeds" "${tasks[@]}" $([ $smoke = 1 ] && echo --smoke)
echo "== done: $out/summary.md"
