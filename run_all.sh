#!/usr/bin/env bash
# Run the study's experiments: its NLI table (five ablations, its pruning as weight masking, and ours beside
# them) and its SER result under its protocol and two leak-free ones, then summary.md. The study's figures
# need its pretrained ParsBERT and HuBERT (hub ids by default; offline, pass folders); --smoke uses tiny models.
#
#   bash run_all.sh                      # the real study (needs ShEMO: --shemo DIR or SHEMO_DIR)
#   bash run_all.sh --smoke              # every experiment end to end, offline, tiny models, minutes on a CPU
#   options: --seeds N (seeds 0..N-1, tables show mean ± std)  --only nli|ser  --shemo DIR  --out DIR
#            --ser-protocols NAME,... (default: every protocol python -m ser.study --list gives)
#            --ser-folds K (also K speaker-independent folds, each tested once, a row of its own; smoke: 3)
#            --gpus 0,1,2,3 (independent experiments side by side, one per GPU)  --slots N (N side by side, same device)
#            --dry-run (print each experiment's command and stop: nothing is made or run)
#
# The experiment lists live in nli/study.py and ser/study.py (python -m nli.study --list).
# Runs go to OUT/nli/<experiment>/seed<k>/ and OUT/ser/<protocol>/seed<k>/ (OUT: runs/, or runs-smoke/ with --smoke).
# Every run is started with --resume: a finished run with the same arguments and inputs is skipped, an
# interrupted one continues from its last finished epoch. A failing run stops the script.
set -euo pipefail
here=$PWD  # relative --out and --shemo (or SHEMO_DIR) name folders from where the command was given
cd "$(dirname "$0")"

smoke=0; dry_run=0; seeds=1; only=""; out=""; shemo="${SHEMO_DIR:-}"; ser_protocols=""; ser_folds=""; gpus=(); slots=1
usage() { echo "run_all.sh: $1 (see --help)" >&2; exit 2; }
value() {  # value FLAG NEXT-ARGUMENT WHAT: the flag's value, or one line and exit 2
  { [ -n "${2:-}" ] && [[ "$2" != --* ]]; } || usage "$1 needs $3"
  printf '%s' "$2"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --dry-run) dry_run=1 ;;
    --seeds) seeds=$(value "$1" "${2:-}" "a number") || exit 2; shift ;;
    --only) only=$(value "$1" "${2:-}" "nli or ser") || exit 2; shift ;;
    --shemo) shemo=$(value "$1" "${2:-}" "a folder") || exit 2; shift ;;
    --out) out=$(value "$1" "${2:-}" "a folder") || exit 2; shift ;;
    --ser-protocols) ser_protocols=$(value "$1" "${2:-}" "a comma-separated list") || exit 2; shift ;;
    --ser-folds) ser_folds=$(value "$1" "${2:-}" "a number of folds (3 or more)") || exit 2; shift ;;
    --gpus) ids=$(value "$1" "${2:-}" "GPU ids, like 0,1,2,3") || exit 2; IFS=, read -ra gpus <<< "$ids"; shift ;;
    --slots) slots=$(value "$1" "${2:-}" "a number") || exit 2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) usage "unknown option $1" ;;
  esac
  shift
done
# python, or python3 where only that exists (PYTHON overrides both)
py=${PYTHON:-$(command -v python || command -v python3 || true)}
[ -n "$py" ] || { echo "run_all.sh: no python or python3 on PATH" >&2; exit 2; }
case "$only" in ""|nli|ser) ;; *) usage "--only takes nli or ser" ;; esac
for v in seeds slots; do [[ "${!v}" =~ ^[1-9][0-9]{0,3}$ ]] || usage "--$v takes a number from 1 to 9999"; done
# the smoke run shows every row, the folds' too (unless --ser-protocols picks some)
[ $smoke = 1 ] && [ -z "$ser_folds" ] && [ -z "$ser_protocols" ] && ser_folds=3
# (compared as text: bash reads 08 as octal and wraps a number of 20 digits)
if [ -n "$ser_folds" ]; then
  [[ "$ser_folds" =~ ^0*([1-9][0-9]*)$ ]] && ser_folds=${BASH_REMATCH[1]} && [[ ${#ser_folds} -gt 1 || $ser_folds -ge 3 ]] \
    || usage "--ser-folds takes a number of folds, 3 or more"
fi
for g in "${gpus[@]}"; do [[ "$g" =~ ^[0-9]+$ ]] || usage "--gpus takes GPU ids, like 0,1,2,3"; done
[ ${#gpus[@]} -gt 0 ] && slots=${#gpus[@]}  # one job per GPU
if [ "$slots" -gt 1 ] && [ ${#gpus[@]} = 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  # jobs sharing the CPU split its cores (measured, 2 cores, smoke run, 2 slots: 2m07 at 2 threads per job, 0m58 at 1)
  export OMP_NUM_THREADS=$(( $(nproc) / slots > 0 ? $(nproc) / slots : 1 ))
fi
[[ -z "$shemo" || "$shemo" == /* ]] || shemo="$here/$shemo"
[[ -z "$out" || "$out" == /* ]] || out="$here/$out"
[ -n "$out" ] || out=$([ $smoke = 1 ] && echo runs-smoke || echo runs)  # (the default: in the project folder)
export PYTHONUNBUFFERED=1

# The experiments, from their one source: name<TAB>flags per line.
nli_names=(); nli_flags=(); ser_names=(); ser_flags=(); known=""  # known: the protocols, folds apart
while IFS=$'\t' read -r name flags; do nli_names+=("$name"); nli_flags+=("$flags"); done < <("$py" -m nli.study --list)
while IFS=$'\t' read -r name flags; do
  [[ "$flags" == *--folds* ]] || known+="${known:+,}$name"
  if [ -z "$ser_protocols" ] || [[ ",$ser_protocols," == *",$name,"* ]] || [[ "$flags" == *--folds* ]]; then
    ser_names+=("$name"); ser_flags+=("$flags")
  fi
done < <("$py" -m ser.study --list ${ser_folds:+--folds "$ser_folds"})
curve_of=$("$py" -c "from nli.study import CURVE_OF; print(CURVE_OF)")
for name in ${ser_protocols//,/ }; do
  [[ ",$known," == *",$name,"* ]] || usage "--ser-protocols: unknown protocol $name (known: $known)"
done

lock_out() {  # one run_all.sh per --out: hold OUT/.lock (the lock every run holds on its own folder) until exit
  lock="$out/$("$py" -c 'from common.outdir import LOCK; print(LOCK)')"
  { mkdir -p "$out" && exec 9>>"$lock"; } 2>/dev/null || usage "--out $out: cannot create or write it"
  if ! "$py" -c 'import fcntl; fcntl.flock(9, fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null; then
    echo "run_all.sh: --out $out is in use by another run_all.sh (process $(head -n 1 "$lock" 2>/dev/null || echo unknown)); wait for it to end, or give another --out" >&2
    exit 2
  fi
  echo $$ > "$lock"  # the holder's process id, for the message above (the lock stays with fd 9)
}

if [ $smoke = 1 ]; then
  [ $dry_run = 1 ] || lock_out
  # Tiny models built from configs and generated data, passed the way a user passes real ones.
  inputs="$out/inputs"
  if [ $dry_run = 0 ] && [ ! -e "$inputs/done" ]; then
    echo "== building tiny models and generated data in $inputs"
    "$py" -m nli.synthetic --data "$inputs/farstail" --model "$inputs/tiny-bert" --rows 480 80 80 & made=$!
    "$py" -m ser.synthetic --data "$inputs/shemo" --model "$inputs/tiny-hubert" --per-class 8 --uneven
    wait "$made"
    touch "$inputs/done"
  fi
  # (Trainer logs its loss every 500 steps; the 60 steps of a smoke run are logged every 10)
  nli_args=(--model "$inputs/tiny-bert" --data-dir "$inputs/farstail" --epochs 2 --lr 3e-3 --trainer-logging-steps 10)
  curve_args=(--data-dir "$inputs/farstail" --importance-batches 4 --fractions 0.2,0.4,0.6 --seeds 2)
  ser_args=(--model "$inputs/tiny-hubert" --data-dir "$inputs/shemo" --epochs 2 --lr 1e-3)
else
  nli_args=()  # the study's model and hyperparameters are the defaults; FarsTail downloads to data/farstail
  curve_args=()
  if [ "$only" != nli ]; then
    if [ -z "$shemo" ] || [ ! -d "$shemo" ]; then
      echo "run_all.sh: ShEMO not found${shemo:+ at $shemo}. Download female.zip and male.zip from https://github.com/pariajm/sharif-emotional-speech-dataset," \
        "unzip it, and point --shemo DIR (or SHEMO_DIR) at the folder holding its .wav files; or run only the NLI half with --only nli. Nothing was trained." >&2
      exit 2
    fi
    # usable ShEMO-named audio (readable, not silent, at least two emotions) before hours of NLI training
    if ! "$py" -m ser.data --check "$shemo"; then
      echo "run_all.sh: $shemo does not hold usable ShEMO audio (see the line above). Nothing was trained." >&2
      exit 2
    fi
  fi
  ser_args=(--data-dir "$shemo")
  [ $dry_run = 1 ] || lock_out
fi

# The jobs, in order, as common/jobs.py reads them (NUL-separated): a name, an output folder, the index of the job it
# waits for (-1: none), the number of words in its command, and the command: a module and its arguments.
job_list() {
  local n=0 seed i dir
  job() { printf '%s\0' "$1" "$2" "$3" $(($# - 3)) "${@:4}"; n=$((n + 1)); }
  for ((seed = 0; seed < seeds; seed++)); do
    if [ "$only" != ser ]; then
      for i in "${!nli_names[@]}"; do
        dir="$out/nli/${nli_names[$i]}/seed$seed"
        # ${nli_flags[$i]} unquoted on purpose: the flags split into words
        job "nli ${nli_names[$i]} seed $seed" "$dir" -1 nli.train "${nli_args[@]}" ${nli_flags[$i]} --seed "$seed" \
          --out "$dir" --resume
        if [ "${nli_names[$i]}" = "$curve_of" ]; then  # heads removed from the fine-tuned model, no retraining
          job "nli pruning curve seed $seed" "$dir/prune_curve" $((n - 1)) nli.prune_curve --model "$dir/model" \
            "${curve_args[@]}" --iterative --out "$dir/prune_curve" --resume
        fi
      done
    fi
    if [ "$only" != nli ]; then
      for i in "${!ser_names[@]}"; do
        dir="$out/ser/${ser_names[$i]}/seed$seed"
        job "ser ${ser_names[$i]} seed $seed" "$dir" -1 ser.train "${ser_args[@]}" ${ser_flags[$i]} --seed "$seed" \
          --cache-dir "$out/ser/augmented-cache" --out "$dir" --resume
      done
    fi
  done
}
if [ $dry_run = 1 ]; then "$py" -m common.jobs --dry-run < <(job_list); exit 0; fi

# Up to $slots jobs side by side (more than one: output in $out/logs/), forked by common/jobs.py. Ctrl-C, SIGTERM or
# SIGHUP (a closed terminal) goes on to it; it stops the running jobs, waits for them; the lock goes only then.
"$py" -m common.jobs --slots "$slots" --gpus "$(IFS=,; echo "${gpus[*]}")" --logs "$out/logs" \
  --preload transformers.models.bert.modeling_bert,transformers.models.hubert.modeling_hubert,audiomentations \
  < <(job_list) & scheduler=$!
stopped=0; status=0
trap 'stopped=1; kill -TERM "$scheduler" 2>/dev/null || true' INT TERM HUP
until wait "$scheduler"; do  # (a trapped signal ends the wait early: wait again until the scheduler has ended)
  status=$?; kill -0 "$scheduler" 2>/dev/null || break
done
trap - INT TERM HUP
if [ $stopped = 1 ] || [ "$status" -ge 130 ]; then  # (130: stopped; above: the scheduler was killed, its jobs stopped)
  echo "run_all.sh: interrupted; run the same command again to continue (finished experiments are skipped," \
    "the others resume from their last finished epoch)" >&2
  exit 130
fi
[ "$status" = 0 ] || exit "$status"

tasks=()
[ "$only" != ser ] && tasks+=(--task nli.study)
ser_rows=$(IFS=,; echo "${ser_names[*]}")  # (the rows run: with --ser-protocols, the summary shows only these)
[ "$only" != nli ] && tasks+=(--task "ser.study${ser_protocols:+:$ser_rows}")
"$py" -m common.summary --out "$out" --seeds "$seeds" "${tasks[@]}" $([ $smoke = 1 ] && echo --smoke)
echo "== done: $out/summary.md"
