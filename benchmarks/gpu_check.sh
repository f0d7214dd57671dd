#!/usr/bin/env bash
# GPU readiness check (issue 19): install what is missing, then run benchmarks/gpu_check.py within 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [OUTDIR]     # OUTDIR defaults to $OUT, else ./gpu_check_out
#   bash benchmarks/gpu_check.sh --fetch-wheels [DIR]     # online, beforehand: wheels the device lacks (.whl)
#
# Install step (skipped by --dry-run): wheels carried in .whl/ go to /tmp/pca_site (on PYTHONPATH); then
# `pip install -e .[dev]` is tried (it needs a package index; where none answers, the repository root on
# PYTHONPATH serves instead); where torch has no CUDA but nvidia-smi sees a GPU, a CUDA build of torch is
# installed. Every step's exit status goes to OUTDIR/install.json, its output to OUTDIR/gpu_check.log.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 480, all parts and the install together).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
STARTED_AT="$(date +%s)"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"
DRY_RUN=0
FETCH=""
OUTDIR=""

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --fetch-wheels) FETCH="${2:-.whl}"; [ $# -gt 1 ] && shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUTDIR="$1" ;;
  esac
  shift
done

if [ -n "$FETCH" ]; then
  exec "$PY" benchmarks/gpu_check.py --fetch-wheels "$FETCH"
fi

OUTDIR="${OUTDIR:-${OUT:-$ROOT/gpu_check_out}}"
mkdir -p "$OUTDIR" || exit 2
LOG="$OUTDIR/gpu_check.log"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: would install .whl/*.whl (if present), pip install -e .[dev], a CUDA torch if torch lacks CUDA" >&2
  exec "$PY" benchmarks/gpu_check.py --dry-run --out "$OUTDIR" --budget-s "$BUDGET_S" --started-at "$STARTED_AT"
fi

step() {  # step NAME CAP_S COMMAND...: run with a time cap, log its output, remember its exit status
  local name="$1" cap="$2"; shift 2
  echo "=== install: $name: $*" >>"$LOG"
  timeout "$cap" "$@" >>"$LOG" 2>&1
  local rc=$?
  STEPS="${STEPS:+$STEPS, }\"$name\": $rc"
}

STEPS=""
: >"$LOG"
if compgen -G ".whl/*.whl" >/dev/null; then
  step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/pca_site .whl/*.whl
  export PYTHONPATH="/tmp/pca_site:$PYTHONPATH"
fi
step pip_editable 90 "$PY" -m pip install -q --retries 0 --timeout 10 -e ".[dev]"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >>"$LOG" 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >>"$LOG" 2>&1; then
    step cuda_torch 240 "$PY" -m pip install -q --retries 0 --timeout 20 torch \
      --index-url https://download.pytorch.org/whl/cu128
  else
    STEPS="${STEPS:+$STEPS, }\"cuda_torch\": \"not attempted: no GPU visible to nvidia-smi\""
  fi
fi
printf '{"seconds": %s, "exit_status": {%s}, "pythonpath": "%s"}\n' \
  "$(( $(date +%s) - STARTED_AT ))" "$STEPS" "$PYTHONPATH" >"$OUTDIR/install.json"

"$PY" benchmarks/gpu_check.py --out "$OUTDIR" --budget-s "$BUDGET_S" --started-at "$STARTED_AT"
