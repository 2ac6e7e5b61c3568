#!/usr/bin/env bash
# The GPU checks and measurements of the GPU-throughput work, in the order to run them on a lent
# GPU machine (each step fits one 10-minute command). Results go to RESULTS.md by hand, with the
# device, the command and the date.
#
#   bash benchmarks/gpu_checks.sh tests      # correctness first: tests/test_gpu.py
#   bash benchmarks/gpu_checks.sh paper      # paper setting, PIL and nvJPEG decoding
#   bash benchmarks/gpu_checks.sh shapes     # varied image sizes, with and without cuDNN autotuning
#   bash benchmarks/gpu_checks.sh single     # --scales 224 --center-crop, with the DataLoader recipe
#   bash benchmarks/gpu_checks.sh precision  # cosine and SVM accuracy of bf16/fp16/tf32 against fp32
#   bash benchmarks/gpu_checks.sh pooling    # batched R-MAC against region by region
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

case ${1:?name a step: tests, paper, shapes, single, precision or pooling} in
tests)
    $python -m pytest -q -s -ra tests/test_gpu.py ;;
paper)
    $python benchmarks/bench_extract.py --count 4096 --naive-count 32
    $python benchmarks/bench_extract.py --count 4096 --naive-count 8 --decoder nvjpeg
    $python benchmarks/bench_extract.py --count 4096 --naive-count 8 --decoder torchvision ;;
shapes)
    $python benchmarks/bench_extract.py --count 4096 --naive-count 8 --varied-sizes
    $python benchmarks/bench_extract.py --count 4096 --naive-count 8 --varied-sizes --no-autotune ;;
single)
    $python benchmarks/bench_extract.py --scales 224 --center-crop --count 20000 --model-only-count 4096 \
        --naive-count 64 --workers 16 --dataloader
    $python benchmarks/bench_extract.py --scales 224 --center-crop --no-flip --count 20000 --model-only-count 4096 \
        --naive-count 64 --workers 16 --decoder nvjpeg --dataloader ;;
precision)
    $python benchmarks/bench_precision.py --device cuda --precisions bf16,fp16,tf32 --per-class 100 ;;
pooling)
    $python benchmarks/bench_pooling.py --device cuda --batch 64 --repeats 20 ;;
*)
    echo "unknown step $1: tests, paper, shapes, single, precision or pooling" >&2
    exit 2 ;;
esac
