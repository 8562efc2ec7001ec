#!/bin/sh
# The peers' own environment: torchvision and transformers do not import beside the project's
# torch 2.13.0 CPU build, so the peer models run from a second venv (torch 2.14.1, a CUDA build
# of ~5.5 GB that runs on the CPU; spconv because the training data pipeline imports model.qgn).
# Not part of the README's install or test commands.
#   sh benchmarks/peers_venv.sh [.venv-peers]
set -eu
venv="${1:-.venv-peers}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 transformers==4.57.6 spconv==2.3.8 \
    numpy pillow psutil
"$venv/bin/python" -c 'import torchvision, transformers; print("peers venv ready:", torchvision.__version__, transformers.__version__)'
