#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool of this workplace; any CUDA box works):
# install carried wheels, build the C++ core, then run what the first argument names.
#
#   bash bench/device_session.sh tests [pytest args]   # the whole test suite on CUDA (+ -m gpu);
#                                                      # args that start with paths run those
#   bash bench/device_session.sh bench [pytest args]   # bench/ (default: the GPU cases, -k gpu)
#                                                      # with JSON under $OUT
#   bash bench/device_session.sh ceilings              # measured copy GB/s and matmul TFLOP/s
#   bash bench/device_session.sh tune [--only grid]    # bench/tune_particles_gpu.py's sweep
#   bash bench/device_session.sh teacher-student [preset] [args]   # the main job on the GPU
#                                                      # (default preset quick; paper: the grid)
#
# Logs and JSON land in $OUT (default ./device-out). Wheels missing on the machine (POT) travel
# in .whl/ (see .library/device/README.md); they are installed under /tmp/site.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
what=${1:-tests}
shift || true

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem \
    --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"
if ! python3 -c "import symkern._C" 2>/dev/null; then
    SYMKERN_BUILD_JOBS=16 python3 -m pip install -e . --no-build-isolation --no-deps -q \
        >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi

case "$what" in
tests)
    # -n / --timeout only where pytest-xdist / pytest-timeout are installed (not in [test])
    extra=()
    python3 -c "import xdist" 2>/dev/null && extra+=(-n 8)
    python3 -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 300)
    paths=(tests)
    [ $# -gt 0 ] && [[ $1 != -* ]] && paths=()
    python3 -m pytest ${paths[@]+"${paths[@]}"} -q -rfEs ${extra[@]+"${extra[@]}"} \
        --junitxml="$OUT/junit.xml" "$@" 2>&1 \
        | tee "$OUT/tests.log" | grep -v "^\." | tail -60
    ;;
bench)
    [ $# -eq 0 ] && set -- -k gpu
    python3 -m pytest bench -q -rfEs --benchmark-json="$OUT/bench.json" "$@" 2>&1 \
        | tee "$OUT/bench.log" | tail -60
    ;;
teacher-student)
    preset=${1:-quick}
    shift || true
    # training on the GPU (Triton, one program per run); the OT metrics on all CPU cores
    symkern run teacher-student --preset "$preset" --device cuda --backend triton \
        --metric-threads "$(nproc)" --out "/tmp/ts-$preset" "$@" 2>&1 | tr '\r' '\n' \
        | grep -v "particle-step/s" | tee "$OUT/ts-$preset.log" | tail -40
    cp "/tmp/ts-$preset/results.json" "/tmp/ts-$preset/summary.csv" \
        "/tmp/ts-$preset/fig_rmd_si.png" "$OUT/" 2>/dev/null
    ;;
tune)
    python3 bench/tune_particles_gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/tune.log" | tail -150
    ;;
ceilings)
    python3 - <<'EOF' | tee "$OUT/ceilings.txt"
import torch, triton
from triton.testing import do_bench
n = 1 << 28  # 1 GiB fp32
src = torch.randn(n, device="cuda"); dst = torch.empty_like(src)
ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
print(f"copy 1 GiB: {ms:.3f} ms, {2 * 4 * n / ms / 1e6:.0f} GB/s (read + write)")
for dt, name, tf32 in ((torch.float32, "tf32", True), (torch.float32, "fp32", False),
                       (torch.bfloat16, "bf16", False)):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(8192, 8192, device="cuda", dtype=dt); b = torch.randn_like(a)
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    print(f"matmul 8192^3 {name}: {ms:.3f} ms, {2 * 8192**3 / ms / 1e9:.0f} TFLOP/s")
EOF
    ;;
esac
