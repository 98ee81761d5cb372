#!/bin/sh
# make gpu-check: capture on a CUDA GPU, checked and timed, in one run that
# fits a 10-minute slot.  Needs an NVIDIA GPU, a python3 whose torch has
# CUDA ($PYTHON, else python3), pytest, and the build's packages (make deps).
#
#   1. build cltfs and the capture library against that torch into
#      build-gpu/ (it must report CUDA);
#   2. the capture tests that run on the GPU (CLTFS_TEST_DEVICE=cuda): bf16
#      capture and a mount capturing on a miss, against the fp32 CPU
#      reference within the bf16-compute tolerance;
#   3. bench/gpu_bench.py: `cltfs capture` against tests/llava_ref.py on the
#      same GPU in bf16, at LLaVA-1.5-7B width: tokens/s of both and their
#      ratio, peak GPU memory, host RSS, cold mount to the first file.
set -u
PY=${PYTHON:-python3}
B=${GPU_BUILD:-build-gpu}
step() { echo "gpu-check: $*" >&2; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null 2>&1 || fail "no nvidia-smi: this machine has no NVIDIA driver"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || fail "nvidia-smi failed"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
	fail "$PY's torch has no CUDA (or sees no GPU): set PYTHON to a python3 with a CUDA torch"
"$PY" -c 'import pytest' 2>/dev/null || fail "$PY has no pytest"

t0=$(date +%s)
step "1/3 build against $PY's torch into $B/"
make -s B="$B" PYTHON="$PY" TORCH_PYTHONS="$PY" all || fail "the build"
grep -q '^TORCH_CUDA := 1' "$B/torch.mk" || fail "$B/torch.mk: the torch found has no CUDA: $(grep TORCH_FROM "$B/torch.mk")"
"$B/cltfs" --version >&2

step "2/3 capture tests on the GPU"
CLTFS_BIN="$PWD/$B/cltfs" CLTFS_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
	tests/test_capture.py -k "bf16_compute or gpu_ or version_reports or device_errors" || fail "the GPU tests"

# the bench may overrun its budget by ~20 s (a mount's unmount wait); a
# CUDA call hung in the reference cannot be interrupted from Python
left=$((540 - ($(date +%s) - t0)))
step "3/3 timing, $left s left"
[ "$left" -gt 120 ] || fail "no time left for the timing part"
timeout -k 10 "$left" "$PY" bench/gpu_bench.py --cltfs "$B/cltfs" --device cuda --budget-s "$((left - 60))" ||
	fail "bench/gpu_bench.py"
step "done in $(($(date +%s) - t0)) s"
