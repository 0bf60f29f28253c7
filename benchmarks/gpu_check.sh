#!/usr/bin/env bash
# GPU checks of issue 16 ("throughput headroom") on one CUDA machine: under 8 minutes on an H200.
#
#   1. env.txt        nvidia-smi, python/torch/CUDA, and which of the packages the code imports are missing
#   2. pytest_cuda.txt the tests that need CUDA (`-k cuda`): preprocessing on CUDA equals the CPU's,
#                      pinned host batches, bf16 + auto batch + prefetch overlap defaults on CUDA,
#                      fused attention against the unfused path in bf16
#   3. gpu.txt        benchmarks/gpu.py (ViT-L/16, random weights): auto batch size and measured
#                      activation memory per image, bare images/s, embed images/s with the prefetch
#                      overlap on/off, campaign embeddings/s, ratio, peak GPU memory GiB, and
#                      the bare rate with compile=True
#   4. summary.txt    the headline lines of 2 and 3
#
# Usage, from anywhere: `OUT=/some/dir bash benchmarks/gpu_check.sh` (default OUT: a new temporary folder).
# Python: $PYTHON, else the repository's .venv/bin/python, else python3. GPU_CHECK_SMOKE=1 runs
# gpu.py with --cpu-smoke (to check this script on a machine without a GPU).
#
# On a lent device machine (its python3 has torch, timm, transformers, pandas, xarray, pyarrow
# but not dask, zarr, geopandas, rshf ...): first, here, `bash benchmarks/gpu_wheels.sh` puts
# the missing packages as wheels in .whl/ (ignored by git); then run with carry [".whl"]:
#   bash benchmarks/gpu_check.sh
# Wheels found in .whl/ are installed into /tmp/site first.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$(mktemp -d -t gpu-check.XXXXXX)}"
mkdir -p "$OUT"
echo "gpu_check: output in $OUT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$OUT/env.txt" 2>&1 || { echo "gpu_check: installing .whl/ failed (see $OUT/env.txt)"; exit 3; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{
    echo "== nvidia-smi -L"; nvidia-smi -L 2>&1 || true
    echo "== CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}"
    "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(),
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
missing = []
for name in ["numpy", "PIL", "torch", "timm", "transformers", "huggingface_hub", "safetensors", "rshf", "dask",
             "distributed", "zarr", "numcodecs", "xarray", "pandas", "pyarrow", "geopandas", "shapely", "pyproj",
             "psutil", "yaml", "rsembed_dask", "rsembed_dask.campaign"]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
print("missing:", "; ".join(missing) if missing else "none")
EOF
} >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== CUDA tests (at $((SECONDS - start)) s)"
# --noconftest: these tests need none of tests/conftest.py's fixtures (emulator, clusters).
timeout 150 "$PY" -m pytest tests/unit/test_preprocess_exact.py tests/integration/test_model.py -k cuda \
    -p no:cacheprovider --noconftest -o addopts="" -q -rA > "$OUT/pytest_cuda.txt" 2>&1
rc_tests=$?
tail -n 15 "$OUT/pytest_cuda.txt"
if grep -q "SKIPPED" "$OUT/pytest_cuda.txt"; then
    echo "gpu_check: some CUDA tests were SKIPPED (no CUDA device seen?)"
    [[ $rc_tests == 0 ]] && rc_tests=5
fi

echo "== benchmarks/gpu.py (at $((SECONDS - start)) s)"
bench_args=(--samples 10000 --compile)
[[ "${GPU_CHECK_SMOKE:-0}" == 1 ]] && bench_args=(--cpu-smoke)  # the script's own flow, on a CPU machine
timeout 330 "$PY" benchmarks/gpu.py "${bench_args[@]}" > "$OUT/gpu.txt" 2>&1
rc_bench=$?
cat "$OUT/gpu.txt" | grep -v "^ *$" | tail -n 40

{
    echo "tests rc=$rc_tests, gpu.py rc=$rc_bench (124: timed out), $((SECONDS - start)) s in all"
    grep -E "passed|failed|error" "$OUT/pytest_cuda.txt" | tail -n 1
    grep -E "^(precision|auto batch size|bare images/s|embed|campaign embeddings/s|ratio|peak GPU memory GiB|compile|bare images/s with compile)" \
        "$OUT/gpu.txt"
} > "$OUT/summary.txt"
echo "== summary"
cat "$OUT/summary.txt"
(( rc_tests == 0 && rc_bench == 0 ))
