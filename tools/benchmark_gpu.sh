#!/usr/bin/env bash
# Run tools/benchmark.py on one CUDA GPU.
#
# Pretraining steps use batch 128 at 224 x 224. The downstream backbones use their recipe
# input sizes: detection 1024 x 1024 with 2 images (the recipe has 8 per GPU) and
# segmentation 512 x 512 with 2 images. Both fp32 and bf16 autocast run, each with 2 warm-up
# and 10 timed rounds.
# NOTE: these settings are sized to finish in under 5 minutes on one recent data-centre GPU,
# but the script has not been run on a GPU yet: check the total time of a first run.
#
# Usage: bash tools/benchmark_gpu.sh [extra tools/benchmark.py options]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
exec "$PYTHON" tools/benchmark.py \
    --device cuda \
    --batch-size 128 \
    --det-batch 2 \
    --precision fp32 bf16 \
    --warmup 2 \
    --repeats 10 \
    --data run --data-iters 100 \
    --out work_dirs/benchmark/cuda.json \
    "$@"
