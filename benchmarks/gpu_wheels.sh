#!/usr/bin/env bash
# Download, here, the wheels benchmarks/gpu_check.sh needs on a lent GPU machine, into .whl/.
#
# That machine's python3 (3.12, x86-64) holds torch, timm, transformers, huggingface_hub,
# safetensors, pandas, xarray, pyarrow, psutil, pyyaml, pillow ... but none of the packages
# below, and it cannot reach a registry. Versions are this repository's environment's; the
# list is what importing rsembed_dask, running the CUDA tests and benchmarks/gpu.py needs
# (gpu_check.sh's env.txt lists anything still missing). About 25 MB in all.
#
#   bash benchmarks/gpu_wheels.sh          # then run gpu_check.sh with carry [".whl"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || [[ ! -d .git ]] || echo '/.whl/' >> .git/info/exclude
PKGS=(
    dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 zict==3.0.0 tblib==3.2.2 tornado==6.6.1
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
    geopandas==1.2.0 shapely==2.2.0 pyproj==3.7.2 affine==3.0.1
    httplib2==0.32.1 rshf==0.2.2
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${PKGS[@]}"
du -sh .whl
