#!/usr/bin/env bash
# Create the project-local virtualenv (.venv) with torch, mmcv (built from
# source with ops), mmengine, mmdet, mmsegmentation and the mimae packages.
#
# Safe to re-run: a stamp inside .venv records the hash of the requirement
# files, so a ready environment returns in seconds. The mmcv wheel is cached in
# $MIMAE_CACHE (default ~/.cache/mimae) so a fresh clone on the same machine
# skips the 8-minute compile.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIMAE_VENV:-$ROOT/.venv}"
CACHE="${MIMAE_CACHE:-$HOME/.cache/mimae}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3.11}"
MMCV_VERSION=2.1.0

log() { echo "[setup $(date +%H:%M:%S)] $*"; }

stamp_hash() {
    cat "$ROOT"/requirements/*.txt "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" | sha256sum | cut -c1-16
}

STAMP="$VENV/.mimae-stamp"
WANT="$(stamp_hash):$ROOT"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    log "environment ready: $VENV"
    exit 0
fi

command -v "$PY" >/dev/null || { echo "error: $PY not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
mkdir -p "$WHEELS"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check --find-links "$WHEELS")

log "installing torch and build requirements"
"${PIP[@]}" -q --upgrade pip
"${PIP[@]}" -q -r "$ROOT/requirements/build.txt"

# mmcv 2.1.0 has no wheel for this torch; build it once and cache the wheel.
MMCV_WHEEL="$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$MMCV_WHEEL" ]]; then
    log "building mmcv $MMCV_VERSION with ops from source (8 to 23 minutes on 2 cores, depending on the CPU)"
    WRAP="$CACHE/cxx20"
    mkdir -p "$WRAP"
    # mmcv's setup.py passes -std=c++17, but torch 2.14 headers need C++20;
    # the last -std flag on the command line wins.
    printf '#!/bin/sh\nexec g++ "$@" -std=c++20\n' > "$WRAP/g++"
    chmod +x "$WRAP/g++"
    BUILD_DIR="$(mktemp -d)"
    (
        cd "$BUILD_DIR"
        CXX="$WRAP/g++" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$VPY" -m pip wheel --no-deps --no-build-isolation -w "$WHEELS" "mmcv==$MMCV_VERSION"
    )
    rm -rf "$BUILD_DIR"
    MMCV_WHEEL="$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl | head -n1)"
fi
log "installing $(basename "$MMCV_WHEEL")"
"${PIP[@]}" -q --no-deps "$MMCV_WHEEL"
"${PIP[@]}" -q addict packaging "yapf<0.40.2" opencv-python-headless

log "installing mmengine, mmdet, mmsegmentation and test requirements"
"${PIP[@]}" -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/optional.txt"
"${PIP[@]}" -q --no-deps --no-build-isolation -e "$ROOT"

log "checking the stack"
"$VPY" - <<'PY'
import mmcv, mmdet, mmseg, mmengine, torch, torchvision
from mmcv.ops import nms, roi_align  # fails when mmcv was built without ops
import mimae, pretrain
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, mmcv {mmcv.__version__}, "
      f"mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
PY
echo "$WANT" > "$STAMP"
log "environment ready: $VENV"
