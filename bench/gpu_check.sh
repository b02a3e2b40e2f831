#!/usr/bin/env bash
# The device check (bench/gpu_check.py): the real training entrypoint (pretraining of Doge-20M and Doge-160M, SFT, DPO
# and GRPO of Doge-20M) and the throughput bench on one GPU, in at most 8 minutes; results under $OUT (else a temp dir).
#
#   bash bench/gpu_check.sh                 # GPU machine: budget 480 s; appends a section to bench/RESULTS.md
#   bash bench/gpu_check.sh --cpu           # reduced sizes on the CPU (automatic without CUDA): about 1.5 minutes
#   PYTHON=/path/to/python bash bench/gpu_check.sh --budget 420 --no-record
#
# The interpreter: $PYTHON, else the project's .venv, else python3 (a GPU image with the dependencies installed or
# carried; the project root goes on PYTHONPATH, so the checkout needs no `pip install -e .`).
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi
budget="" previous="" extra=()
for argument in "$@"; do
  case "$argument" in --budget=*) budget=${argument#--budget=} ;; esac
  if [ "$previous" = "--budget" ]; then budget=$argument; fi
  previous=$argument
done
if [ -z "$budget" ]; then
  case " $* " in *" --cpu "*) budget=600 ;; *) budget=480 ;; esac
  extra=(--budget "$budget")
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The script keeps its own deadline (the budget less 20 s: stopping the part then running and writing the results).
# The backstop, if that fails: SIGTERM 3 s before the budget ends (the script stops the running part and writes what it
# has), SIGKILL 3 s later.
exec timeout --kill-after=3 "$(( ${budget%.*} - 3 ))" "$PYTHON" "$root/bench/gpu_check.py" "$@" "${extra[@]}"
