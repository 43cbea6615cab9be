"""Probe: the default decoding with a penalty on words that would make a trigram no training sentence has.

    python benchmarks/probe_phrasing_decoding.py [--model BUNDLE] 0 1 3 20

For each weight W, both dev sets are captioned as ``capcli eval`` does (beam 3, the default decoding,
the numpy search on the CPU) with ``--unseen-trigram-penalty W`` (the bundle's trigram table, which
``capcli export --trigrams-from`` writes: every step takes W off the log-probability of each word that,
after the hypothesis's last two words, its start and end included, makes a trigram no training sentence
has); then scored on the full protocol, with the count of captions that still have such a trigram.  One
JSON line per weight.  What it found is in docs/grounded-training.md (sessions 21 and 22).  DATA
(default ../shared/data) holds flickr8k/ and coco-everyday/.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from capcli.datasets import load_split, load_text_captions
from capcli.evaluation import caption_split, score
from capcli.text import tokenize
from capcli.train.phrasing import seen_trigrams, training_text, unseen_trigrams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", type=float)
    parser.add_argument("--model", default=None, help="a bundle with a trigram table [default: the packaged model]")
    args = parser.parse_args()
    data = Path(os.environ.get("DATA", "../shared/data"))
    paired = [
        load_split("flickr8k", data / "flickr8k", "train"),
        load_split("coco-everyday", data / "coco-everyday", "train"),
    ]
    dev = {
        "everyday": load_split("coco-everyday", data / "coco-everyday", "dev"),
        "flickr8k": load_split("flickr8k", data / "flickr8k", "dev"),
    }
    seen = seen_trigrams(training_text(paired, load_text_captions(data / "coco-everyday" / "text-captions.csv")))
    for weight in args.weights:
        out: dict[str, Any] = {"weight": weight}
        for name, split in dev.items():
            hyps, protocol = caption_split(
                split, args.model, device="cpu", search="numpy", unseen_trigram_penalty=weight
            )
            m = score(split, hyps, protocol, meteor=False).metrics
            odd = sum(bool(unseen_trigrams(tokenize(c), seen)) for c in hyps.captions.values())
            out[name] = {
                "CIDEr": round(m["CIDEr"], 4),
                "BLEU-4": round(m["BLEU-4"], 4),
                "CHAIR-i": round(m["object_hallucination"], 4),
                "unseen": odd,
            }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
