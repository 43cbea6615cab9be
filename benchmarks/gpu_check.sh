#!/usr/bin/env bash
# The GPU figures issue 22 still needs, in one prepared run (about 6 minutes on an H100 or H200).
#
#   benchmarks/gpu_check.sh OUT_DIR [DEVICE]        # DEVICE: cuda (default), or cpu for a dry run here
#
# Needs capcli importable with onnxruntime-gpu (on a lent machine: benchmarks/pack_onnxruntime_gpu.py),
# the Flickr8k photos in $IMAGES (default ../shared/data/flickr8k/images; on a lent machine, a
# git-ignored folder of the checkout named in `carry`: 400 photos are 11 MB, and capcli bench cycles a
# folder with fewer than N) and the model in $MODEL (default: the shipped one). docs/performance.md has
# the two calls that bring all of it to a lent machine.
# Writes into OUT_DIR:
#   info.json              capcli info: the providers really used
#   bench-search.json      capcli bench --search both: limit, reading alone, greedy / beam 3 numpy and graph
#   parity-search.json     search graph vs numpy loop on 320 dev photos (must be identical)
#   bench-graph-b64.json   the search graph alone with batches of 64, and
#   bench-graph-b256.json  of 256
#   parity-float16.json    float16 encoder vs float encoder: captions kept, score moves
#   bench-float16.json     the same photos with --precision float16 (encoder in float16)
#   search-placement.txt   where onnxruntime placed the search graph's nodes (any on the CPU cost copies)
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
if [ -n "${MODEL:-}" ]; then export CAPCLI_MODEL=$MODEL; fi  # capcli's commands read it; parity.py gets --model
parity=($python benchmarks/parity.py ${MODEL:+--model "$MODEL"} --device "$device" --images "$images" -n "${PARITY_N:-320}")
bench=($capcli bench --device "$device" --search both --no-big -n "$n" --rounds 2 --images "$images")
# In order of need, each file written as it is done, so a call cut at its limit still brings back the first.
$capcli info --device "$device" --json > "$out/info.json"
"${bench[@]}" --json "$out/bench-search.json"
"${parity[@]}" > "$out/parity-search.json" || true  # exit 1 when a caption differs: the report says which
# The search graph's Loop launches its body's ~280 nodes once per word whatever the batch, so on a GPU
# bigger batches may pay: the graph alone at 64 and 256 photos a batch (twice the photos, one round).
for b in 64 256; do
    "${bench[@]}" --search graph --batch-size "$b" -n "$((2 * n))" --rounds 1 --json "$out/bench-graph-b$b.json"
done
"${parity[@]}" --check float16 > "$out/parity-float16.json"
"${bench[@]}" --precision float16 --json "$out/bench-float16.json"
# onnxruntime's verbose log names the nodes it could not place on the device (its placement lines only).
$python - "$device" > "$out/search-placement.txt" 2>&1 <<'EOF'
import sys
import onnxruntime as ort
from capcli.bundle import DECODER, load_bundle
from capcli.graph_search import search_session
from capcli.runtime import CPU, _cuda_providers, _native_stderr
bundle = load_bundle(None)
providers = [CPU] if sys.argv[1] == "cpu" else _cuda_providers(int((sys.argv[1] + ":0").split(":")[1]))
options = ort.SessionOptions()
options.log_severity_level = 0
with _native_stderr() as log:  # the float decoder's graph: the one CUDA runs
    search_session(bundle.files[bundle.search_graph(DECODER)], bundle.path, options, providers)
print("".join(line for line in log.getvalue().splitlines(True) if "VerifyEachNodeIsAssignedToAnEp" in line))
EOF
