#!/usr/bin/env bash
# Ready the checkout for the two device calls of docs/performance.md ("Getting there"), and undo it.
#
#   benchmarks/device_prep.sh prepare [WHEEL]   # WHEEL: the cp312 onnxruntime-gpu wheel (default: pip download)
#   benchmarks/device_prep.sh restore           # the bundle back into the working tree
#
# prepare: .device/onnxruntime-gpu.tar.xz.part-* (pack_onnxruntime_gpu.py), .device/photos (the first
# 400 Flickr8k photos, 11 MB) and the shipped bundle moved to .device/bundle, out of the working tree, so
# that call 1 (the runtime) fits in 64 MiB. Call 2 carries .device/bundle and .device/photos.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=capcli/models/default
case "${1:-}" in
prepare)
    wheel=${2:-}
    if [ -z "$wheel" ]; then
        mkdir -p /tmp/capcli-wheel
        python3 -m pip download -q onnxruntime-gpu==1.31.1 --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 -d /tmp/capcli-wheel
        wheel=$(ls /tmp/capcli-wheel/onnxruntime_gpu-1.31.1-*.whl)
    fi
    rm -f .device/onnxruntime-gpu.tar.xz.part-*
    python3 benchmarks/pack_onnxruntime_gpu.py "$wheel" .device
    mkdir -p .device/photos
    # sed reads the whole listing (head would end ls early: a SIGPIPE that pipefail counts as a failure)
    ls ../shared/data/flickr8k/images | sed -n '1,400s|^|../shared/data/flickr8k/images/|p' | xargs cp -t .device/photos
    if [ -d "$bundle" ]; then rm -rf .device/bundle && mv "$bundle" .device/bundle; fi
    du -sh .device/onnxruntime-gpu.tar.xz.part-* .device/photos .device/bundle
    ;;
restore)
    if [ ! -d "$bundle" ]; then mv .device/bundle "$bundle"; fi
    git status --short -- "$bundle"
    ;;
*)
    sed -n '2,9p' "$0" >&2
    exit 2
    ;;
esac
