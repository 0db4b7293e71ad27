#!/usr/bin/env bash
# Checks for a lent GPU machine, as one script (device time is scarce):
#   1. the GPU-marked tests, then the EM/3D suites with the CuPy backend as the default;
#   2. E-step throughput on the GPU against cuBLAS sgemm measured in the same run;
#   3. 2D classification: CPU strong scaling over Dask workers (many cores there), and the GPU rate;
#   4. (stage class3d only) the class3d tests and the two-conformation benchmark with CuPy;
#   5. (stage refine128 only) the GPU-marked tests, then the refinement check: 10k particles of
#      box 128 (realistic preset, no junk), gold-standard vs true-pose resolution and poses within 3°.
#   6. (stage kernels only) the CUDA kernels: GPU-marked tests, E-step throughput with the kernels, a
#      profile of the E-step's phases, one timed box-128 refinement of 10 000 particles, then as time
#      allows the array path for comparison ("before") and the suites with CuPy as the default backend;
#      within KERNELS_BUDGET seconds (default 470) in all.
# Wheels for packages that machine lacks may sit in $WHEELS (default .whl/; see docs/gpu.md).  Logs go to $OUT.
set -u
OUT=${OUT:-/tmp/spa_gpu_out}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
stage=${1:-all}
step() { echo "== $1 ($(date +%T))"; }
step env
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import cupy, numpy; from spa.backend import cupy_available; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'usable', cupy_available())" | tee -a "$OUT/gpu.txt"
if [[ $stage == all || $stage == tests ]]; then
  step "gpu-marked tests"
  timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/em tests/geometry tests/test_backend.py \
    > "$OUT/pytest_gpu_marked.log" 2>&1; tail -15 "$OUT/pytest_gpu_marked.log"
  step "suites with SPA_BACKEND=cupy"
  SPA_BACKEND=cupy timeout 200 python3 -m pytest -q -n 8 --timeout 180 -p no:cacheprovider \
    tests/em tests/class2d tests/class3d tests/refine3d tests/initial_model tests/test_reconstruct.py \
    > "$OUT/pytest_cupy_backend.log" 2>&1; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_cupy_backend.log"
fi
if [[ $stage == all || $stage == bench3d ]]; then
  step "bench_class2d cupy"
  SPA_BACKEND=cupy timeout 60 python3 benchmarks/bench_class2d.py --n 4000 --iter 2 --workers 1 2>&1 \
    | tee "$OUT/bench_class2d_cupy.log"
  step "bench_refine3d cupy"
  SPA_BACKEND=cupy timeout 150 python3 benchmarks/bench_refine3d.py --n 2000 --box 48 --snr 0.5 --max-iter 15 \
    > "$OUT/bench_refine3d_cupy.log" 2>&1; tail -25 "$OUT/bench_refine3d_cupy.log"
fi
if [[ $stage == all || $stage == bench ]]; then
  step "bench_estep cupy"
  timeout 80 python3 benchmarks/bench_estep.py --backend cupy --n 2048 2>&1 | tee "$OUT/bench_estep_cupy.log"
  step "bench_class2d cupy"
  SPA_BACKEND=cupy timeout 60 python3 benchmarks/bench_class2d.py --n 4000 --iter 2 --workers 1 2>&1 \
    | tee "$OUT/bench_class2d_cupy.log"
  step "bench_class2d cpu scaling"
  SPA_BACKEND=numpy OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout 120 \
    python3 benchmarks/bench_class2d.py --n 4000 --iter 2 --workers 1 2 4 8 2>&1 | tee "$OUT/bench_class2d_cpu.log"
fi
if [[ $stage == class3d ]]; then
  step "class3d tests with SPA_BACKEND=cupy"
  SPA_BACKEND=cupy timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/class3d tests/em/test_estep.py \
    > "$OUT/pytest_class3d_cupy.log" 2>&1; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_class3d_cupy.log"
  step "bench_class3d cupy"
  SPA_BACKEND=cupy timeout ${CLASS3D_LIMIT:-330} python3 benchmarks/bench_class3d.py --n ${CLASS3D_N:-4000} \
    --snr 0.5 --runs 2 --iter 8 --global-iter 12 > "$OUT/bench_class3d_cupy.log" 2>&1
  tail -3 "$OUT/bench_class3d_cupy.log"
fi
if [[ $stage == refine128 ]]; then
  step "gpu-marked tests"
  timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/em tests/geometry tests/test_backend.py \
    > "$OUT/pytest_gpu_marked.log" 2>&1; tail -4 "$OUT/pytest_gpu_marked.log"
  step "bench_refine3d cupy, box 128"
  SPA_BACKEND=cupy timeout ${REFINE_LIMIT:-420} python3 benchmarks/bench_refine3d.py --preset realistic \
    --n ${REFINE_N:-10000} --junk-fraction 0 --max-iter 25 --sim-workers 8 --time-limit ${REFINE_TIME:-330} \
    > "$OUT/bench_refine3d_box128.log" 2>&1; grep -E "refine3d: |^[{}]|^  \"" "$OUT/bench_refine3d_box128.log" | tail -45
fi
if [[ $stage == reconstruct ]]; then
  step "reconstruct: NumPy vs CuPy, stage by stage"
  timeout 60 python3 -m spa.cli simulate --kind particles --preset realistic --n-particles 3000 --junk-fraction 0 \
    --workers 8 --output-dir /tmp/simr --seed 1 > "$OUT/simulate.log" 2>&1
  timeout 120 python3 benchmarks/gpu/compare_reconstruct.py --star /tmp/simr/truth/particles.star 2>&1 \
    | grep -v "chunks:" | tee "$OUT/compare_reconstruct.log"
  step "gpu-marked tests"
  timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/em tests/geometry tests/test_backend.py \
    > "$OUT/pytest_gpu_marked.log" 2>&1; tail -4 "$OUT/pytest_gpu_marked.log"
fi
if [[ $stage == kernels ]]; then
  # sizes and backend can be shrunk for a dry run on a CPU: ESTEP_N, REFINE_N, REFINE_TIME, BENCH_BACKEND=numpy
  budget=${KERNELS_BUDGET:-470} be=${BENCH_BACKEND:-cupy} n=${ESTEP_N:-2048}
  left() { echo $(( budget - SECONDS > 5 ? budget - SECONDS : 5 )); }
  stamp() { python3 -u -c 'import sys, time
for line in sys.stdin: sys.stdout.write(f"{time.time():.1f} {line}"); sys.stdout.flush()'; }
  step "gpu-marked tests: kernels vs NumPy, determinism, E-step"
  timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/em/test_cuda_kernels.py \
    tests/em/test_gpu_backend.py tests/test_backend.py > "$OUT/pytest_gpu_marked.log" 2>&1
  grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|Error" "$OUT/pytest_gpu_marked.log" | tail -15
  step "bench_estep $be with the kernels"
  timeout 100 python3 benchmarks/bench_estep.py --backend $be --n $n 2>&1 | tee "$OUT/bench_estep_cupy.log"
  step "E-step profile"
  timeout 30 python3 benchmarks/bench_estep.py --backend $be --n $n --profile --configs 50:128,10:64 2>&1 \
    | tee "$OUT/profile_estep_cupy.log"
  step "bench_refine3d $be, box 128"
  SPA_BACKEND=$be timeout ${REFINE_LIMIT:-180} python3 benchmarks/bench_refine3d.py --preset realistic \
    --n ${REFINE_N:-10000} --junk-fraction 0 --max-iter 25 --sim-workers 8 --time-limit ${REFINE_TIME:-100} 2>&1 \
    | stamp > "$OUT/bench_refine3d_box128.log"
  grep -E "refine3d: |simulated|[{}]$|\"" "$OUT/bench_refine3d_box128.log" | tail -40
  step "bench_estep $be, array path (before)"
  [[ ${BEFORE:-1} == 1 ]] && SPA_CUDA_KERNELS=0 SPA_GPU_BLOCK_ELEMENTS=16777216 timeout $(( $(left) < 45 ? $(left) : 45 )) python3 \
    benchmarks/bench_estep.py --backend $be --n $n --configs 50:128,10:64 2>&1 | tee "$OUT/bench_estep_before.log"
  step "suites with SPA_BACKEND=$be"
  SPA_BACKEND=$be timeout $(left) python3 -m pytest -q -n 8 -p no:cacheprovider tests/em tests/class2d \
    tests/refine3d tests/class3d tests/initial_model tests/test_reconstruct.py > "$OUT/pytest_cupy_backend.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_cupy_backend.log" | tail -12
fi
step done
