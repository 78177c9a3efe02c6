#!/usr/bin/env bash
# One call on a CUDA machine (GUIDE section 5): install, the native test subset, the barrier
# micro-benchmarks, where a step's time goes (bench.phases), a parallel compile warm-up,
# then the timed benchmark (targets first).
#   bash bench/gpu_check.sh OUT_DIR [python -m bench arguments...]
# Everything lands in OUT_DIR as it is produced (a call cut by its limit keeps what it
# wrote), in 8 files (the device tool brings back 8):
#   run.log      install, versions, the micro and warm-up output, the bench table
#   tests.log    the native tests, one line per test (-v), so a cut run still names failures
#   failures.log each failing test's traceback, appended as it fails
#   micro.jsonl  barrier and h-broadcast rows, then bench.phases' rows (kind "phases")
#   checks.jsonl every configuration of the warm-up, checked against cuDNN (not timed)
#   rows.jsonl   the timed rows, one per implementation and configuration
#   <stamp>-<gpu>.json and .png   the timed run's result, for bench/results/
# Each part has a bound in seconds (TEST_TIMEOUT, MICRO_TIMEOUT, PHASES_TIMEOUT,
# WARM_TIMEOUT, BENCH_BUDGET) and the defaults add up to about 505 s: give the device call
# 520. On an H200 the tests took 100-130 s on 16 workers, the warm-up and bench their bounds.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [bench args...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}  # the GPU image's interpreter is python3 (no plain python)
log="$out/run.log"
workers=${WORKERS:-$(nproc)}
t0=$SECONDS
stamp() { echo "== $(( SECONDS - t0 ))s: $*" | tee -a "$log"; }

# the GPU machines have no network: install against the torch/triton already there
stamp install
$py -m pip install --no-deps --no-build-isolation -e . >>"$log" 2>&1 \
  || { tail -20 "$log"; exit 1; }
{ nvidia-smi; $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0))"; } \
  >>"$log" 2>&1
tail -1 "$log"

# 1. the tests that run natively on CUDA tensors (the others use CPU tensors and the
# interpreter, which CI covers), on every core: compiling the kernel variants dominates.
# tests/test_compile.py builds cubins on the CPU: CI covers it, GPU time need not.
# (tests/test_torch_integration.py first: its torch.compile tests are the slowest, and
# on 2026-11-27, started last, six of them failed at 96% of a run cut at its limit)
stamp "tests ($workers workers)"
FUSEDRNN_TEST_FAILURES="$out/failures.log" \
timeout "${TEST_TIMEOUT:-160}" $py -m pytest -v -n "$workers" --timeout 100 -p no:cacheprovider \
  -rfE --tb=short tests/test_torch_integration.py tests/test_kernels.py \
  tests/test_modules_triton.py tests/test_precision.py tests/test_barrier.py \
  tests/test_recurrent_dropout.py::test_layer_kernels_match_reference \
  tests/test_recurrent_dropout.py::test_splitk_backward_with_every_option \
  tests/test_recurrent_dropout.py::test_ll_forward_with_every_option \
  tests/test_stepclock.py \
  >"$out/tests.log" 2>&1
test_rc=$?
tail -3 "$out/tests.log" | tee -a "$log"

# 2. barrier cost and h broadcast at one program per SM
stamp micro
timeout "${MICRO_TIMEOUT:-45}" $py -m bench.micro --barriers-only --out "$out" >>"$log" 2>&1
micro_rc=$?

# 2b. where a weight-stationary step's time goes: the kernels' own clocks, per phase
# (rows of kind "phases" in micro.jsonl; a quiet GPU, before the warm-up's shards)
stamp phases
timeout "${PHASES_TIMEOUT:-60}" $py -m bench.phases --out "$out" >>"$log" 2>&1
phases_rc=$?

# 3. compile warm-up: every core checks its share of the configurations (targets first),
# filling Triton's on-disk cache for the timed run; the checks are results too
stamp "warm-up ($workers shards)"
for k in $(seq 0 $(( workers - 1 ))); do
  timeout "${WARM_TIMEOUT:-80}" $py -m bench --targets --check-only --shard "$k/$workers" \
    --rows "$out/checks.jsonl" "$@" >/dev/null 2>>"$log" &
done
wait

# 4. the timed run, one process: targets, then the grid until the budget is spent
stamp bench
timeout $(( ${BENCH_BUDGET:-125} + 60 )) $py -m bench --targets --budget-s "${BENCH_BUDGET:-125}" \
  --rows "$out/rows.jsonl" --out "$out" "$@" >>"$log" 2>&1
bench_rc=$?
stamp "tests exit $test_rc, micro exit $micro_rc, phases exit $phases_rc, bench exit $bench_rc"
exit $(( test_rc != 0 || micro_rc != 0 || phases_rc != 0 || bench_rc != 0 ))
