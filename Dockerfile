# QGN Serve image: build it with docker/build.sh, which prepares what this file needs.
#
#   docker/build.sh cpu                    # qgn-serve:cpu, Debian bases made here, no registry
#   docker/build.sh gpu                    # qgn-serve:gpu, torch's CUDA 12 wheels + spconv-cu126
#   docker/build.sh cpu --registry-bases   # on python:3.11-slim-bookworm from a registry
#
# The build itself needs no network (build.sh runs it with --network none): every Python
# package comes from docker/wheels/, a wheelhouse that build.sh fills on the host with `pip
# download` (deps/, with the requirements read from pyproject.toml) and the project's own
# wheel (project/). BASE and BUILDER must put python3 at the same path, since the venv made
# in the builder is copied into the runtime image.

ARG BASE=python:3.11-slim-bookworm
ARG BUILDER=python:3.11-bookworm

# --- The venv, built with a compiler at hand ------------------------------------------------
# DL3006 (tag the image): BASE and BUILDER are build arguments; build.sh passes tagged images.
# hadolint ignore=DL3006
FROM ${BUILDER} AS build
# The label lets build.sh find this project's images it made stale (docker image prune).
LABEL io.qgn-serve.stage=build
# The dependencies first (the multi-GB layer for the GPU variant): editing the source reuses it.
COPY docker/wheels/deps/ /wheels/deps/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps \
        -r /wheels/deps/requirements.txt
COPY docker/wheels/project/ /wheels/project/
ENV QGN_NATIVE_CACHE=/opt/qgn-native
# The project; then the allocation window (model/allocation_window.cpp: per-request peak memory,
# counted by torch's allocators) compiled against this torch, world-readable so that the
# runtime user loads it; then what the server never reads: torch's C++ headers (needed only
# for that compile), its C++ test programs, and the bytecode caches of the build.
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheels/project/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m model.allocation_window \
    && chmod -R a+rX /opt/qgn-native \
    && torch=$(/opt/venv/bin/python -c "import torch, os; print(os.path.dirname(torch.__file__))") \
    && rm -rf "$torch/include" "$torch/test" \
    && find "$torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# --- The server ------------------------------------------------------------------------------
# DL3006: as above.
# hadolint ignore=DL3006
FROM ${BASE} AS runtime
LABEL io.qgn-serve.stage=runtime
# cpu in the CPU image; auto in the GPU image: CUDA when `--gpus` passes a GPU in, else the
# CPU with a log line saying so (QGN_DEVICE=cuda refuses to start without one).
ARG QGN_DEVICE=cpu
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QGN_DEVICE=${QGN_DEVICE} \
    QGN_NATIVE_CACHE=/opt/qgn-native \
    QGN_WEIGHTS=/app/weights/qgn_small_synthetic.safetensors
WORKDIR /app
# A non-root user; the venv, the window and the weights stay owned by root, read-only to it.
# USER is numeric so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 qgn \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/qgn \
        --shell /usr/sbin/nologin qgn
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/qgn-native /opt/qgn-native
COPY weights/ weights/
USER 10001:10001

EXPOSE 8000
# Healthy means requests are served: /readyz answers once the weights are loaded, calibrated
# and a warm-up inference ran (/healthz answered before the warm-up, and a fresh container
# took its first requests with 503 not_ready); while draining it is 503 again.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# `docker stop` sends SIGTERM: the server drains within QGN_DRAIN_TIMEOUT_S (8 s by default,
# inside Docker's default 10 s grace period; raise both with --stop-timeout for longer).
CMD ["qgn", "serve", "--host", "0.0.0.0", "--port", "8000"]
