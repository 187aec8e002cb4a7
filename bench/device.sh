#!/usr/bin/env bash
# bench/pipeline.py on a lent GPU machine (the workplace's `device` tool), which receives the checkout only.
#
#   bash bench/device.sh prepare   # here: the real COCO sample into .devdata/, wheels the device lacks into .whl/
#   bash bench/device.sh run [pipeline.py flags]   # there, with carry [".devdata", ".whl"]
#
# Both folders are git-ignored (add them to .git/info/exclude). The device has PyTorch, OpenCV, NumPy and tqdm;
# pycocotools, google-crc32c and simplejpeg come from .whl/ (built for the device's Python, 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    shared="${MLLIB_SHARED_DATA:-../shared/data}"
    mkdir -p .devdata/coco-real/annotations .whl
    cp -r "${shared}/coco-real/val2017" .devdata/coco-real/
    cp "${shared}/coco-real/annotations/instances_val2017.json" .devdata/coco-real/annotations/
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d .whl \
        pycocotools==2.0.11 google-crc32c==1.9.0 simplejpeg==1.9.0
    du -sh .devdata .whl
    ;;
run)
    shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PWD}"
    nproc
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    if [ "$#" -eq 0 ]; then
        set -- --images 6000 --workers 1,2,8,15 --default_collate 15 --unordered 15 --transport 1,15 --train_variants eager,unordered --batch 32 --seconds 6 --skip latency
    fi
    python3 bench/pipeline.py --shared .devdata "$@"
    ;;
*)
    echo "usage: bash bench/device.sh prepare | run [bench/pipeline.py flags]" >&2
    exit 2
    ;;
esac
