#!/usr/bin/env bash
# One call on a CUDA machine: install, the test suite natively (no interpreter), then the
# benchmark; everything lands in OUT_DIR (at most 8 files, what the device tool brings back).
#   bash bench/gpu_check.sh OUT_DIR [python -m bench arguments...]
# TEST_TIMEOUT / MICRO_TIMEOUT / BENCH_TIMEOUT (seconds) bound each part so the call ends inside its lease.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [bench args...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

# the GPU machines have no network: install against the torch/triton already there
python -m pip install --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { tail -20 "$out/install.log"; exit 1; }
{ nvidia-smi; python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0))"; } \
  >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# tests/test_compile.py builds cubins on the CPU: CI covers it, GPU time need not
timeout "${TEST_TIMEOUT:-240}" python -m pytest -q -x -p no:cacheprovider \
  --deselect tests/test_compile.py tests 2>&1 | tee "$out/tests.log"
test_rc=${PIPESTATUS[0]}

# barrier and h-broadcast costs, then the weight-stationary vs streaming vs cuDNN targets;
# rows land in $out/micro.jsonl as they are measured
timeout "${MICRO_TIMEOUT:-150}" python -m bench.micro --out "$out" 2>&1 | tee "$out/micro.log"
micro_rc=${PIPESTATUS[0]}

timeout "${BENCH_TIMEOUT:-450}" python -m bench --out "$out" "$@" 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "tests exit $test_rc, micro exit $micro_rc, bench exit $bench_rc"
exit $(( test_rc != 0 || micro_rc != 0 || bench_rc != 0 ))
