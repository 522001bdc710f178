#!/usr/bin/env bash
# The GPU check, in one device call: install the package, cold/warm start time (and where it goes),
# the README's commands with the CUDA toolkit hidden (tools/fresh_env_check.sh, as root), every
# test (GPU ones included), compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on each
# backend (the fp8 layer included on Hopper), and a short benchmark (on Hopper also with fp8 weights).
# Full logs go to $OUT (default /tmp/moefuse-gpu-check); a compact table is printed last.
#   tools/gpu_check.sh [bench.py arguments...]
set -uo pipefail
OUT=${OUT:-/tmp/moefuse-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

step() { echo "== $*" >&2; }
step "install"
python3 -m pip install -q --no-deps --no-build-isolation . >"$OUT/install.log" 2>&1 || {
  cat "$OUT/install.log"
  exit 1
}
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
python3 -m moefuse.info >"$OUT/info.txt" 2>&1

step "cold / warm start"
for layout in standard gpt_oss; do
  (cd /tmp && python3 "$OLDPWD/tools/cold_start.py" --layout $layout --profile) \
    >"$OUT/cold_start_profile_$layout.txt" 2>&1
  head -1 "$OUT/cold_start_profile_$layout.txt" >>"$OUT/cold_start.txt"
done

step "the README's commands with the CUDA toolkit hidden"
bash tools/fresh_env_check.sh >"$OUT/fresh_env.log" 2>&1
tail -1 "$OUT/fresh_env.log" >"$OUT/fresh_env.txt"

step "tests"
python3 -m pytest -q -rs -p no:cacheprovider tests >"$OUT/pytest.log" 2>&1
tests_rc=$?

step "compute-sanitizer"
backends=$(python3 -c "import cupy; print('sm80 sm90' if cupy.cuda.Device().compute_capability == '90' else 'sm80')")
for backend in $backends; do
  for tool in memcheck racecheck synccheck initcheck; do
    log="$OUT/sanitizer_${tool}_$backend.log"
    MOEFUSE_BACKEND=$backend compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 3 \
      python3 tools/sanitize_forward.py >"$log" 2>&1
    echo "$backend $tool rc=$? $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$log" | tail -1)" \
      >>"$OUT/sanitizer.txt"
  done
done

step "bench"
python3 bench.py "$@" --json "$OUT/bench.json" >"$OUT/bench.txt" 2>"$OUT/bench_progress.log"
bench_rc=$?
fp8_rc=skipped
if [ "$backends" = "sm80 sm90" ]; then  # Hopper: the fp8 layer's grid too (issue 16)
  step "bench --weights fp8"
  python3 bench.py --weights fp8 "$@" --json "$OUT/bench_fp8.json" >"$OUT/bench_fp8.txt" \
    2>"$OUT/bench_fp8_progress.log"
  fp8_rc=$?
fi

echo
echo "GPU: $gpu    date: $(date -u +%F)"
grep -E "^(moefuse |driver|GPU|  NVML)" "$OUT/info.txt"
echo "tests (rc=$tests_rc): $(tail -1 "$OUT/pytest.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20
cat "$OUT/sanitizer.txt" "$OUT/cold_start.txt" "$OUT/fresh_env.txt"
echo "bench (rc=$bench_rc):"
tail -40 "$OUT/bench.txt"
[ $bench_rc -eq 0 ] || tail -5 "$OUT/bench_progress.log"
echo "bench --weights fp8 (rc=$fp8_rc):"
[ "$fp8_rc" = skipped ] || tail -30 "$OUT/bench_fp8.txt"
exit $tests_rc
