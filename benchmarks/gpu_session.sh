#!/usr/bin/env bash
# One prepared call for a session that is lent a CUDA GPU (the `device` tool's `run`): builds the
# extensions in place, runs every GPU test, then the GPU benchmarks, and leaves at most 8 files in
# $OUT (the tool returns no more). Sized for one call of at most ~9 minutes on an H100/H200 machine:
# the stage limits add up to 500 s (build 150, peak rates 30, tests 45 + 75 + 40, benchmarks
# 70 + 45 + 45), leaving room for the start-up of each step under run's 590 s.
#
# Before the call, on the development machine (the benchmarks' real text does not travel otherwise):
#   echo /.gpu_data/ >> .git/info/exclude
#   mkdir -p .gpu_data/lm_corpus && cp ../shared/data/lm_corpus/valid.txt .gpu_data/lm_corpus/
# then: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu_data"], timeout_s=590)
# Afterwards copy the JSON files into benchmarks/results/ and write the summary next to them.
#
# The device image's versions differ from this machine's (2026-11: torch 2.11.0+cu130, Triton 3.6.0,
# Python 3.12; here torch 2.13, Triton 3.8). Checked without a GPU on 2026-12-02, worth redoing when
# they change: every csrc/ source compiles against torch 2.11's headers (`pip download --no-deps
# torch==2.11.0`, unzip torch/include, g++/nvcc -c as tests/ops/nvcc_check.py does), and
# `PYTHONPATH=<pip install --target of triton==3.6.0> python -m elmo_fast.triton_check --arch 80 90`
# compiles every kernel (3.6's interpreter cannot run them: scalar arguments break `range`).
#
# Each stage has its own time limit, so a slow or hanging stage still leaves the others' files.
# The machine's image has its own torch/triton (no installs): the package is used from the
# checkout (PYTHONPATH), nothing is pip-installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_session_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "no CUDA GPU visible to $PY: nothing to do here" >&2; exit 1; }
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
    CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
    export CUDA_HOME
fi
[ -d .gpu_data/lm_corpus ] && export ELMO_FAST_SHARED_DATA="$PWD/.gpu_data"
log="$OUT/session.log"
stage() { echo "=== $1 ($(date -u +%H:%M:%S))" | tee -a "$log"; }

stage "device"
{ nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee -a "$log"

stage "build (CPU + CUDA extensions, in place)"
timeout 150 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1
echo "build rc=$?" | tee -a "$log"
tail -n 3 "$OUT/build.log" | tee -a "$log"
"$PY" -m elmo_fast.info 2>&1 | tee -a "$log"

stage "peak rates (the ceilings the benchmarks are read against)"
timeout 30 "$PY" - <<'PY' 2>&1 | tee -a "$log"
import torch
def rate(dtype, n=8192, reps=10):
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        a @ b
    e.record(); torch.cuda.synchronize()
    return 2 * n**3 * reps / (s.elapsed_time(e) / 1e3) / 1e12
torch.backends.cuda.matmul.allow_tf32 = False
print(f"fp32 (no tf32) matmul: {rate(torch.float32):.1f} TFLOP/s")
torch.backends.cuda.matmul.allow_tf32 = True
print(f"tf32 matmul: {rate(torch.float32):.1f} TFLOP/s;  bf16 matmul: {rate(torch.bfloat16):.1f} TFLOP/s")
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
y.copy_(x); s.record()
for _ in range(10):
    y.copy_(x)
e.record(); torch.cuda.synchronize()
print(f"device copy: {2 * 2**30 * 10 / (s.elapsed_time(e) / 1e3) / 1e12:.2f} TB/s (read + write)")
PY

stage "GPU tests (CUDA + Triton kernels against the eager reference)"
# One pytest process per group: an illegal memory access poisons a process's CUDA context, so in a
# single run every later test would fail with the same error and hide which kernel it was. The
# nvcc source checks are left out (the build stage just compiled the same files: ~100 s). The
# Triton group's limit covers compiling every kernel variant the tests use (a fresh cache).
gpu_tests() {  # limit, label, pytest arguments...
    local limit=$1 label=$2
    shift 2
    echo "--- $label" >>"$OUT/gpu_tests.log"
    timeout -s INT -k 5 "$limit" "$PY" -m pytest -q -p no:cacheprovider "$@" >>"$OUT/gpu_tests.log" 2>&1
    echo "gpu tests ($label) rc=$?" | tee -a "$log"
    tail -n 6 "$OUT/gpu_tests.log" | tee -a "$log"
}
export CUDA_LAUNCH_BLOCKING=1  # tiny shapes: cheap, and a kernel fault is reported at its launch
gpu_tests 45 "CUDA extension" tests/ops/test_char_cnn_cuda.py tests/ops/test_lstm_proj_cuda.py -k "not sources_compile"
unset CUDA_LAUNCH_BLOCKING
gpu_tests 75 "Triton" tests/ops/test_char_cnn_triton.py tests/ops/test_lstm_proj_triton.py
gpu_tests 40 "Elmo and pretraining on the GPU" tests/modules/test_elmo_cuda.py tests/train/test_pretrain.py -k "cuda or gpu"

stage "benchmarks"
# Limits in seconds; SIGINT first, so pytest-benchmark still writes the records it has.
bench() {  # name, limit, -k expression
    timeout -s INT -k 10 "$2" "$PY" -m pytest -q -p no:cacheprovider "benchmarks/test_bench_$1.py" -k "$3" \
        --benchmark-json "$OUT/$1_gpu.json" >>"$log" 2>&1
    echo "bench $1 rc=$?" | tee -a "$log"
}
bench char_cnn 70 "cuda"
bench lstm 45 "fwd and not fwdbwd"
bench elmo 45 "not original or 32x20"
for b in char_cnn lstm elmo; do
    [ -s "$OUT/${b}_gpu.json" ] && "$PY" -m benchmarks.summarize "$OUT/${b}_gpu.json" >>"$OUT/summary.md" 2>&1
done
stage "done"
cat "$OUT/summary.md" 2>/dev/null | cut -c1-400
