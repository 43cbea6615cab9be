#!/usr/bin/env bash
# Export a grounded checkpoint as a shippable bundle and score it on both dev sets (issue 18's protocol).
#
#   benchmarks/eval_checkpoint.sh runs/g9-scst/last.pt g9e2
#
# Writes runs/bundles/NAME (int8 decoder, 16-bit weights: what would ship) and
# runs/eval/NAME-{everyday,flickr8k}.{json,jsonl,txt}: beam 3 on the CPU with
# the int8 decoder, pycocoevalcap with the PTB tokenizer, all references, and
# CHAIR object hallucination. DATA (default ../shared/data) holds flickr8k/
# and coco-everyday/; EVAL_ARGS (word-split) adds capcli eval options, e.g.
# EVAL_ARGS=--repeated-words. A shipping candidate needs Flickr8k CIDEr >= 0.62 and
# everyday CIDEr >= 0.60 (README, "The shipped model").
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,10p "$0"; exit 2; }
ckpt=$1 name=$2
data=${DATA:-../shared/data}
capcli=${CAPCLI:-.venv/bin/capcli}
mkdir -p runs/bundles runs/eval
$capcli export "$ckpt" -o "runs/bundles/$name" --quantize --float16-weights --force > "runs/eval/$name-export.txt"
for set in everyday flickr8k; do
    case $set in
        everyday) args=(--dataset coco-everyday --data "$data/coco-everyday") ;;
        flickr8k) args=(--dataset flickr8k --data "$data/flickr8k") ;;
    esac
    $capcli eval --model "runs/bundles/$name" "${args[@]}" --split dev --beam 3 --device cpu ${EVAL_ARGS:-} \
        --json-out "runs/eval/$name-$set.json" --captions-out "runs/eval/$name-$set.jsonl" \
        | tee "runs/eval/$name-$set.txt"
done
