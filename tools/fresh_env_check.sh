#!/usr/bin/env bash
# Do the README's commands work on a machine with only the NVIDIA driver, no CUDA toolkit?
# Run on a GPU machine (no internet needed), as root for the toolkit to be hidden on disk too.
#
# "Clean" here: nothing is installed (there is no index to install from); the system python3,
# whose site-packages must hold every wheel setup.cfg declares (base + bench: listed first), runs
# this checkout from PYTHONPATH, as `python bench.py` does after `pip install`. The CUDA toolkit is
# hidden: /usr/local/cuda* is covered by an empty folder in a private mount namespace (or renamed
# aside and restored on exit; failing both it stays on disk, and the summary says so),
# CUDA_PATH/CUDA_HOME are unset and cuda folders leave PATH and LD_LIBRARY_PATH. Both kernel caches
# start empty, so NVRTC and the CUDA headers are used, from the wheels. Each check lists the CUDA
# libraries its process loaded (/proc/self/maps) and fails if one (but the driver's libcuda) is not
# from a wheel in site-packages. Not clean: the other packages in site-packages stay visible.
set -euo pipefail
if [[ -z ${FRESH_ENV_CHECK_NS:-} ]] && unshare --mount --propagation private true 2>/dev/null; then
  export FRESH_ENV_CHECK_NS=1 # rerun in a private mount namespace: its mounts end with it
  exec unshare --mount --propagation private "$(readlink -f "$0")" "$@"
fi
cd "$(dirname "$0")/.."
tmp=$(mktemp -d) && mkdir "$tmp/empty" && moved=() && failed=()
restore() { for d in "${moved[@]}"; do mv "$d.hidden" "$d"; done; rm -rf "$tmp"; }
trap restore EXIT
trap 'exit 130' INT TERM
hidden="nothing: env only, the toolkit stays on disk" && shopt -s nullglob
toolkits=$(for link in /usr/local/cuda*/; do readlink -f "$link"; done | grep -v '\.hidden$' | sort -u || true)
for d in $toolkits; do
  if [[ -n ${FRESH_ENV_CHECK_NS:-} ]] && mount --bind "$tmp/empty" "$d"; then hidden="an empty bind mount"
  elif [[ $EUID == 0 ]] && mv "$d" "$d.hidden"; then moved+=("$d") && hidden="renaming (undone on exit)"; fi
done
unset CUDA_PATH CUDA_HOME CUDA_ROOT
no_cuda() { tr : '\n' <<<"$1" | { grep -vi cuda || true; } | paste -sd: -; }
PATH=$(no_cuda "$PATH") && LD_LIBRARY_PATH=$(no_cuda "${LD_LIBRARY_PATH:-}") && export LD_LIBRARY_PATH
export PYTHONPATH=$PWD MOEFUSE_CACHE_DIR=$tmp/moefuse CUPY_CACHE_DIR=$tmp/cupy
echo "toolkit ($toolkits) hidden by $hidden: ls /usr/local/cuda/ -> $(ls /usr/local/cuda/ 2>&1 | head -c 70)"

WHEELS='import configparser, importlib.metadata as md, re
cfg = configparser.ConfigParser(); cfg.read("setup.cfg")
for req in cfg["options"]["install_requires"].split() + cfg["options.extras_require"]["bench"].split():
    print("  %-30s installed: %s" % (req, md.version(re.match(r"[\w.-]+", req)[0])))'
LIBS='import atexit, os, re
def libs():  # the CUDA libraries (libcu*, libnvrtc*, libnvJitLink*) loaded, and from where
    found = sorted({l.split()[-1] for l in open("/proc/self/maps") if re.search(r"/lib(cu|nvrtc|nvJitLink)[\w-]*\.so", l)})
    print("loaded:", *found, sep="\n  ", flush=True)
    if [p for p in found if "-packages/" not in p and "/libcuda.so" not in p]: os._exit(9)
atexit.register(libs)
'
FORWARD='import cupy, numpy as np, moefuse
from moefuse import reference
from moefuse_bench.problems import moe_problem
p = moe_problem(np.random.default_rng(0), "bf16", 64, 256, 512, 8, 2, bias=False); d = p.device()
out = moefuse.fused_moe(d["x"], d["w1"], d["w2"], d["topk_weights"], d["topk_ids"])
want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)  # astype: a CuPy bf16 kernel
err = reference.relative_error(out.astype(cupy.float32).get(), want)
print(f"fused_moe on {moefuse.gpu_name()}: relative error {err:.1e}"); assert err < 1e-2'
BENCH='import runpy, sys
sys.argv = ["bench.py", "--shape", "mixtral", "--tokens", "16", "--reps", "3", "--sets", "1"]
runpy.run_path("bench.py", run_name="__main__")'
check() { echo "== $1" && python3 -c "$2" || failed+=("$1"); }
check "declared wheels" "$WHEELS" && check "fused_moe vs reference" "$LIBS$FORWARD" && check "bench.py" "$LIBS$BENCH"
result=$([[ ${#failed[@]} == 0 ]] && echo PASS || echo "FAIL (${failed[*]})")
echo "fresh_env_check: $result; toolkit hidden by $hidden; $(nvidia-smi -L 2>/dev/null | head -1)"
[[ ${#failed[@]} == 0 ]]
