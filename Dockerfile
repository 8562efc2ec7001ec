# QGN Serve image.
#
#   GPU (default): docker build -t qgn-serve:cu126 .
#                  docker run --gpus 1 -p 8000:8000 qgn-serve:cu126
#   CPU only:      docker build --build-arg VARIANT=cpu -t qgn-serve:cpu .
#
# The two variants differ only in their base image, the PyTorch wheel index and the spconv
# extra of pyproject.toml; everything from `FROM base-${VARIANT}` on is shared. BuildKit
# builds only the base stage that VARIANT names.

ARG VARIANT=cu126

# --- GPU base: CUDA 12.6 runtime with cuDNN, Python 3.11 from Ubuntu 22.04 --------------------
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS base-cu126
# DL3008 (pin apt versions): the base image tag pins the distribution, and Ubuntu's archive
# drops superseded patch versions, so an exact apt pin would break every rebuild after the
# next security update of python3.11.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
# QGN_DEVICE=auto: CUDA when `--gpus` passes a GPU in, else the CPU, with a log line saying so.
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
    QGN_EXTRA=cu126 \
    QGN_DEVICE=auto

# --- CPU base: official Python 3.11 image -------------------------------------------------
FROM python:3.11.14-slim-bookworm AS base-cpu
RUN python -m venv /opt/venv
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    QGN_EXTRA=cpu \
    QGN_DEVICE=cpu

# --- The server, on either base -----------------------------------------------------------
# DL3006 (tag the image): base-${VARIANT} is one of the two stages above, each pinned by tag.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QGN_WEIGHTS=/app/weights/qgn_small_synthetic.safetensors
WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so that editing the source reuses this
# (multi-GB, for CUDA) layer. torch comes from the PyTorch index of the variant; its pin must
# match pyproject.toml's (tests/docker/test_dockerfile.py checks). The extra (`cu126` =
# spconv-cu126==2.3.8, or `cpu` = spconv==2.3.8) is read from pyproject.toml as well.
COPY pyproject.toml ./
RUN pip install --no-cache-dir pip==25.3 \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies'][os.environ['QGN_EXTRA']]))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The shipped weights (a .safetensors with its .json model card) change less often than the
# code, so they come before it.
COPY weights/ weights/

# The source last: the project itself, with its extra (already satisfied by the layer above,
# so nothing is downloaded here but the build backend).
COPY README.md ./
COPY model/ model/
COPY server/ server/
RUN pip install --no-cache-dir "./[${QGN_EXTRA}]" \
    && pip check

ENV QGN_NATIVE_CACHE=/opt/qgn-native
# The allocation window (model/allocation_window.cpp: per-request peak memory, counted by
# torch's allocators) is compiled against this image's torch, here, so that the image needs
# no compiler at run time; the compiler leaves in the same layer. DL3008 (pin apt versions):
# as above, the base image pins the distribution and its archive drops superseded versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ \
    && python -m model.allocation_window \
    && apt-get purge -y --auto-remove g++ \
    && rm -rf /var/lib/apt/lists/*

# A non-root user; the code, venv and weights stay owned by root and read-only to it. USER is
# numeric so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 qgn \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/qgn \
        --shell /usr/sbin/nologin qgn
USER 10001:10001

EXPOSE 8000
# The model loads in the lifespan before /healthz answers: allow a minute for it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["qgn", "serve", "--host", "0.0.0.0", "--port", "8000"]
