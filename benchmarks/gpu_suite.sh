#!/usr/bin/env bash
# The GPU campaign in one command (make gpu-suite) for a lent GPU machine: its own python3
# (torch 2.11+, triton 3.6+), no network, no install step. Builds in place, runs every test on
# CUDA, the kernel report and the benchmarks; writes logs and results to $OUT when set (else
# benchmarks/results/); prints a short table last. Exits non-zero if the build or a test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

# $OUT brings back at most 8 files: gpu-suite.log (build + tests), gpu-bench.log, the kernel
# report's .json/.md, and the suite's <device>-<date>/ results.json, results.md and two plots.
log="$out/gpu-suite.log"
MAX_JOBS=$(nproc) python3 setup.py -q build_ext --inplace > "$log" 2>&1
build_rc=$?
tail -n 5 "$log"
[ $build_rc -eq 0 ] || { echo "build failed (see gpu-suite.log)"; exit $build_rc; }

# The kernel report only compiles (CPU work): it runs beside the tests, not beside the timings.
python3 -m benchmarks.kernel_report --out "$out" > /dev/null 2>&1 &
report_pid=$!
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee -a "$log" | tail -n 25
tests_rc=${PIPESTATUS[0]}
wait $report_pid || echo "kernel report failed"
python3 -m benchmarks --quick --out "$out" 2>&1 | tee "$out/gpu-bench.log" \
  | grep -E "^\| .*(ours|eager channels_last)" | grep -E "bfloat16" | tail -n 60
echo "tests exit code: $tests_rc"
exit $tests_rc
