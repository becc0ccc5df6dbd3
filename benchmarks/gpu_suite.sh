#!/usr/bin/env bash
# The GPU campaign (make gpu-suite) for a lent GPU machine: its own python3 (torch 2.11+,
# triton 3.6+), no network, no install step. Builds in place, runs every test on CUDA, the
# kernel report and the benchmarks; writes logs and results to $OUT when set (else
# benchmarks/results/); prints a short table last. Exits non-zero if the build or a test failed.
# PART=tests or PART=bench runs half of it (the device allows 10 minutes a call; the whole
# suite may need two calls: `make gpu-suite PART=tests`, then `make gpu-suite PART=bench`).
set -uo pipefail
part="${PART:-all}"
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

# $OUT brings back at most 8 files: gpu-suite.log (build + tests), gpu-bench.log, the kernel
# report's .json, and the suite's <device>-<date>/ results.json, results.md and three plots.
log="$out/gpu-suite.log"
MAX_JOBS=$(nproc) python3 setup.py -q build_ext --inplace > "$log" 2>&1
build_rc=$?
tail -n 5 "$log"
[ $build_rc -eq 0 ] || { echo "build failed (see gpu-suite.log)"; exit $build_rc; }

tests_rc=0
if [ "$part" != bench ]; then
  # The kernel report only compiles (CPU work): it runs beside the tests, not the timings.
  report_dir=$(mktemp -d)
  python3 -m benchmarks.kernel_report --out "$report_dir" > /dev/null 2>&1 &
  report_pid=$!
  python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee -a "$log" | tail -n 25
  tests_rc=${PIPESTATUS[0]}
  wait $report_pid && cp "$report_dir/kernel_report.json" "$out/" || echo "kernel report failed"
fi
if [ "$part" != tests ]; then
  python3 -m benchmarks --quick --out "$out" 2>&1 | tee "$out/gpu-bench.log" \
    | grep -E "^\| .*(ours|eager( channels_last)?) \|" | grep -E "bfloat16" | tail -n 60
fi
echo "tests exit code: $tests_rc"
exit $tests_rc
