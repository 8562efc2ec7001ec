#!/usr/bin/env bash
# The CUDA path, checked in one call on a GPU machine that has its own Python and torch but
# no container engine (the device machines lent to this project: Python 3.12, a CUDA 13
# torch). It brings only what that machine lacks, as wheels in .whl/ (at most 64 MiB):
#
#   docker/gpu-check.sh --fetch     # here: fill .whl/ for Python 3.12 (pip download)
#   docker/gpu-check.sh             # there, in the repository root; prints a summary and
#                                   # writes it to $OUT/gpu-check.json when OUT is set
#
# spconv: spconv-cu126's wheel alone is 70 MB (over what a call may carry) and is built for
# CUDA 12; the machine's torch is CUDA 13. So the check runs the model on `spconv-triton`,
# which presents itself as a drop-in replacement (imported as `spconv` through a shim that
# exists only for this check); the image itself ships spconv-cu126 beside torch 2.10 (CUDA 12).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  spconv-triton==1.0.0
  safetensors==0.8.0 pillow==13.0.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4
  pydantic_core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 uvicorn==0.54.0
  h11==0.16.0 click==8.5.1 anyio==4.16.0 idna==3.21 python-multipart==0.0.34
  prometheus_client==0.26.0 orjson==3.13.0 fastapi_offline==1.7.7 httpx==0.28.1
  httpcore==1.0.9 certifi==2026.10.19.post1 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
  packaging==26.4 hypothesis==6.170.17 sortedcontainers==2.4.0 attrs==26.1.0
)

if [[ ${1:-} == --fetch ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  mkdir -p .whl
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

started=$SECONDS
site=/tmp/qgn-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" .whl/*.whl
# `import spconv` -> spconv_triton, for this check only.
mkdir -p "$site/spconv"
cat >"$site/spconv/__init__.py" <<'EOF'
"""Shim for docker/gpu-check.sh: spconv-triton under spconv's name."""
import sys

import spconv_triton
import spconv_triton.pytorch

sys.modules[__name__ + ".pytorch"] = spconv_triton.pytorch
__version__ = "triton-" + getattr(spconv_triton, "__version__", "1.0.0")
EOF
export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, spconv; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.is_available(), '| spconv', spconv.__version__)"
# The CUDA tests of the suite (sparse against dense, the window against the allocator).
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/model/test_sparse.py \
  tests/model/test_memory.py -k "cuda or sparse" 2>&1 | tail -n 15 || true
timeout 240 python3 -m benchmarks.gpu_check
echo "gpu-check: $((SECONDS - started)) s"
