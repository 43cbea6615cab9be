#!/usr/bin/env bash
# The GPU figures issue 22 still needs, in one prepared run (about 6 minutes on an H100 or H200).
#
#   benchmarks/gpu_check.sh OUT_DIR [DEVICE]        # DEVICE: cuda (default), or cpu for a dry run here
#
# Needs capcli importable with onnxruntime-gpu (pip install --no-deps the wheel, as
# /work/.library/device/README.md describes) and the Flickr8k photos in $IMAGES (default
# ../shared/data/flickr8k/images; on a device machine, a git-ignored folder of the checkout named in
# `carry`: 200 photos are about 25 MB, and capcli bench cycles a folder with fewer than N).
# Writes into OUT_DIR:
#   info.json              capcli info: the providers really used
#   parity-search.json     search graph vs numpy loop on 320 dev photos (must be identical)
#   parity-float16.json    float16 encoder vs float encoder: captions kept, score moves
#   bench-search.json      capcli bench --search both: limit, reading alone, greedy / beam 3 numpy and graph
#   bench-float16.json     the same photos with --precision float16 (encoder in float16)
# then sets nothing: the figures go into GRAPH_BY_DEFAULT["cuda"], the README's GPU table and
# docs/performance.md by hand.
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [DEVICE]}
device=${2:-cuda}
images=${IMAGES:-../shared/data/flickr8k/images}
n=${N:-1000}
capcli=${CAPCLI:-capcli}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
$capcli info --device "$device" --json > "$out/info.json"
$python benchmarks/parity.py --device "$device" --images "$images" -n "${PARITY_N:-320}" > "$out/parity-search.json" || true
$python benchmarks/parity.py --check float16 --device "$device" --images "$images" -n "${PARITY_N:-320}" \
    > "$out/parity-float16.json"
$capcli bench --device "$device" --search both --no-big -n "$n" --rounds 2 --images "$images" \
    --json "$out/bench-search.json"
$capcli bench --device "$device" --precision float16 --search both --no-big -n "$n" --rounds 2 --images "$images" \
    --json "$out/bench-float16.json"
