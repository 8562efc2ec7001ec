#!/usr/bin/env bash
# Builds the QGN Serve image on a machine that reaches only the package registries.
#
#   docker/build.sh cpu|gpu [--tag T] [--registry-bases]
#
# 1. The bases: Debian bookworm made with mmdebstrap and `docker import` (a runtime base with
#    python3, a builder base that adds python3-venv and g++), once per package list. With
#    --registry-bases the public python:3.11-slim-bookworm / python:3.11-bookworm are used
#    instead (for machines that reach a container registry).
# 2. The wheelhouse: `pip download` on this host, with this host's pip settings, fills
#    ~/.cache/qgn-serve/wheelhouse/<variant>; the project's own wheel is built beside it.
# 3. `docker build --network none`: the Dockerfile installs from that wheelhouse only.
# Tags: qgn-serve:<variant> and qgn-serve:<version>-<variant> (compose and the manifests use
# the versioned one), plus --tag T when given; the builder stage as qgn-serve-build:<variant>.
set -euo pipefail

usage() { echo "usage: docker/build.sh cpu|gpu [--tag T] [--registry-bases]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
variant=$1; shift
[[ $variant == cpu || $variant == gpu ]] || usage
extra_tags=() registry_bases=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --tag) [[ $# -ge 2 ]] || usage; extra_tags+=("$2"); shift 2 ;;
    --registry-bases) registry_bases=1; shift ;;
    *) usage ;;
  esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
version=$("$python" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
started=$SECONDS
say() { printf '[build.sh %4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

# --- 1. bases ------------------------------------------------------------------------------
# The runtime base carries only the interpreter; the venv is built in the builder base and
# copied over, so both must put python3 at the same path (Debian's /usr/bin/python3 here,
# /usr/local/bin/python3 in the public images).
debian_base() {  # debian_base NAME PACKAGES: the image tag, built with mmdebstrap if missing
  local name=$1 packages=$2
  local options=(--variant=minbase "--include=$packages"
    "--dpkgopt=path-exclude=/usr/share/man/*" "--dpkgopt=path-exclude=/usr/share/doc/*"
    "--dpkgopt=path-exclude=/usr/share/locale/*" "--dpkgopt=path-exclude=/usr/share/info/*"
    '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin')
  local key
  key=$(printf '%s\n' "${options[@]}" | sha256sum | cut -c1-12)
  local tag="qgn-base:bookworm-$name-$key"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
    say "making $tag with mmdebstrap ($packages)"
    local tar
    tar=$(mktemp --suffix=.tar)
    mmdebstrap --quiet "${options[@]}" bookworm "$tar" >&2
    docker import --change 'CMD ["/bin/bash"]' "$tar" "$tag" >/dev/null
    rm -f "$tar"
  fi
  echo "$tag"
}
if [[ $registry_bases == 1 ]]; then
  base=python:3.11-slim-bookworm builder=python:3.11-bookworm
else
  base=$(debian_base runtime python3)
  builder=$(debian_base build python3,python3-venv,g++)
fi
say "bases: runtime $base, builder $builder"

# --- 2. wheelhouse -------------------------------------------------------------------------
# Requirements: the project's dependencies and its extra for the variant, read from
# pyproject.toml (the one place they are pinned).
wheelhouse=${QGN_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/qgn-serve/wheelhouse}/$variant
mkdir -p "$wheelhouse"
requirements=$(mktemp)
"$python" - "$variant" >"$requirements" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"][sys.argv[1]]))
EOF
say "pip download into $wheelhouse"
"$python" -m pip download --quiet --only-binary :all: --dest "$wheelhouse" -r "$requirements"
# The build context carries this variant's wheels only (hard links, no copy).
context_wheels=docker/wheels
rm -rf "$context_wheels"
trap 'rm -rf "$repo/$context_wheels"' EXIT
mkdir -p "$context_wheels/deps" "$context_wheels/project"
cp -l "$wheelhouse"/*.whl "$context_wheels/deps/" 2>/dev/null || cp "$wheelhouse"/*.whl "$context_wheels/deps/"
cp "$requirements" "$context_wheels/deps/requirements.txt"
rm -f "$requirements"
say "building the qgn-serve wheel"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$context_wheels/project" . >/dev/null
rm -rf build ./*.egg-info

# --- 3. the image --------------------------------------------------------------------------
device=cpu
[[ $variant == gpu ]] && device=auto
tags=(-t "qgn-serve:$variant" -t "qgn-serve:$version-$variant")
for tag in "${extra_tags[@]}"; do tags+=(-t "$tag"); done
build_args=(--network none --build-arg "BASE=$base" --build-arg "BUILDER=$builder"
  --build-arg "QGN_DEVICE=$device")
# The builder stage is tagged too (qgn-serve-build:<variant>): it is the next build's layer
# cache, and tagged it is not dangling. What a rebuild leaves untagged (the image and the
# builder stage it replaced, 1-8 GB each) is pruned, or every source edit would keep ~3 GB.
say "docker build --target build -t qgn-serve-build:$variant"
docker build "${build_args[@]}" --target build -t "qgn-serve-build:$variant" .
say "docker build ${tags[*]}"
docker build "${build_args[@]}" "${tags[@]}" .
docker image prune --force --filter label=io.qgn-serve.stage >/dev/null
size=$(docker image inspect "qgn-serve:$variant" --format '{{.Size}}')
say "built qgn-serve:$variant and qgn-serve:$version-$variant, $((size / 1000000)) MB"
