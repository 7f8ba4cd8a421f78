#!/usr/bin/env bash
# Everything the cuda backend needs from a lent H100/H200, as one device call of at most 9
# minutes (each step has its own time limit; results go to $OUT, or ./gpu_out).
#
# Before the call, on the machine without a GPU (the device has no lark and cannot download):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl lark==1.3.1
# then: device run, command "bash scripts/gpu_session.sh", carry [".whl"], timeout_s 600.
#
# Steps: the GPU and its SASS (HGMMA present, no local-memory spills in the wgmma kernels);
# scripts/gpu_check.py on cuda-h100-wgmma (fp16/bf16/fp32 x four layouts x awkward sizes, the
# wgmma cases included, against float64 numpy); a tiling sweep of 4096^3 (NN and NT: every wgmma
# and mma.sync tiling, each result checked against a float32 product, next to cuBLAS); the
# large DeepBench rows 2560x7000x2560 and 7680x24000x2560 (NN and TN: the wgmma path) against
# cuBLAS; the gpu-marked tests (as far as time allows).
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 ISAMAP_CACHE=/tmp/isamap-cache
python3 -c "import lark" || { echo "lark is missing: carry it as a wheel (see the top of this script)"; exit 1; }

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its output
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" | tail -25
    echo "=== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,compute_cap,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
step sass 60 python3 - << 'EOF'
import subprocess, compiler, hw_models
from compiler.backends.cuda import cuda_source
from compiler.backends.cuda.runtime import compile_source
from compiler.bench.gemm import gemm_source
from ir.bind import bind
t = hw_models.load("cuda-h100-wgmma")
for a_t, b_t in ((False, False), (False, True), (True, False)):
    k = compiler.parse(gemm_source("half", "float", a_t, b_t)).kernel()
    so = compile_source(cuda_source(k, bind(k, dict(M=4096, N=4096, K=4096)), t=t))
    sass = subprocess.run(["cuobjdump", "--dump-sass", str(so)], capture_output=True, text=True).stdout
    print(f"A{'T' if a_t else 'N'}B{'T' if b_t else 'N'}: HGMMA {sass.count('HGMMA')}, HMMA {sass.count('HMMA')}, "
          f"UTMALDG {sass.count('UTMALDG')}, LDL {sass.count('LDL')}, STL {sass.count('STL')}, "
          f"WARPGROUP {sass.count('WARPGROUP')}")
EOF
step check 150 python3 scripts/gpu_check.py --target cuda-h100-wgmma --out "$OUT"
step sweep 120 python3 scripts/gpu_check.py --target cuda-h100-wgmma --no-check --sweep \
    --shapes 4096x4096x4096,4096x4096x4096:NT
step bench 150 python3 -m compiler.cli bench gemm --target cuda-h100-wgmma --only 2560x7000x2560,7680x24000x2560
step pytest 80 python3 -m pytest -q -x -m gpu tests/test_cuda.py -p no:cacheprovider
