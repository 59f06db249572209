#!/usr/bin/env bash
# The GPU check in one call (at most ~10 minutes on one H200): GPU tests of the Triton backend, loss
# benchmarks (triton vs reference vs compiled reference), a ViT-B/16 training step, achieved TFLOP/s
# and GB/s against the H200 limits, the training loop's steps under torch.cuda.set_sync_debug_mode("error"),
# the loss against its GPU peers (Liger-Kernel, cut-cross-entropy, where they import); writes
# $OUT/gpu_report.json (always, with partial results and errors) and prints a table.  See bench/gpu_check.py for what each part measures.
#
#   bench/gpu_check.sh [--out DIR] [--dry-run]
#
# --out defaults to $OUT.  --dry-run: the same parts on CPU with tiny shapes (TRITON_INTERPRET=1),
# for CI.  Exit status 0 when no part recorded an error.  $PYTHON (default: python) runs the parts.
# No install: the parts run in a temporary copy of the repository (udon_fast/, bench/,
# tests/, pyproject.toml) where kernels/ lies at udon_fast/kernels as an install lays it out, without
# the native library (it would not match another torch), so the native backend is simply absent.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-}"
DRY_RUN=()
while (($#)); do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=(--dry-run); shift ;;
    *) echo "usage: $0 [--out DIR] [--dry-run]" >&2; exit 2 ;;
  esac
done
[[ -n "$OUT_DIR" ]] || { echo "$0: give --out DIR or set OUT" >&2; exit 2; }
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
rm -f "$OUT_DIR"/part_*.json* "$OUT_DIR"/status_* "$OUT_DIR"/tests_junit.xml "$OUT_DIR"/gpu_report.json

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cp -r "$REPO/udon_fast" "$REPO/bench" "$REPO/tests" "$REPO/pyproject.toml" "$STAGE/"
cp -r "$REPO/kernels" "$STAGE/udon_fast/kernels"
rm -f "$STAGE"/udon_fast/_native*.so
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
export PYTHONPATH="$STAGE${PYTHONPATH:+:$PYTHONPATH}"
# The GPU peers (Liger-Kernel, cut-cross-entropy) import from .gpu_peers when it was installed there and
# carried: pip install --no-deps --target .gpu_peers liger-kernel cut-cross-entropy
[[ -d "$REPO/.gpu_peers" ]] && export PYTHONPATH="$PYTHONPATH:$REPO/.gpu_peers"
export PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python}"
if ((${#DRY_RUN[@]})); then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  LIMITS=(tests:60 losses:60 train:90 sync:90 peers:60)
else
  LIMITS=(tests:110 losses:140 train:140 sync:120 peers:60)   # + staging and report (20 s): under 10 minutes
fi

cd "$STAGE"
for entry in "${LIMITS[@]}"; do
  part="${entry%%:*}" limit="${entry##*:}"
  timeout -k 10 "$limit" "$PY" -m bench.gpu_check "$part" --out "$OUT_DIR" "${DRY_RUN[@]}"
  status=$?
  echo "$status (limit ${limit} s)" > "$OUT_DIR/status_$part"
done
timeout -k 5 20 "$PY" -m bench.gpu_check report --out "$OUT_DIR"
