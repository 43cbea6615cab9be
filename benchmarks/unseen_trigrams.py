"""Count captions whose phrasing no training sentence uses: a trigram, start and end included, the corpus lacks.

    python benchmarks/unseen_trigrams.py runs/eval/x-everyday.jsonl runs/eval/x-flickr8k.jsonl [--show]

The corpus is what ``capcli train-grounded`` trains on (``capcli.train.phrasing``): Flickr8k train,
coco-everyday train and its caption-only sentences, from DATA (default ../shared/data).  ``--show`` lists
each such caption with its unseen trigrams ("A living room is sitting on a bed." | room is sitting).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from capcli.datasets import load_split, load_text_captions
from capcli.text import tokenize
from capcli.train.phrasing import seen_trigrams, training_text, unseen_trigrams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captions", nargs="+", type=Path, help="JSONL records with a caption (capcli caption or eval)")
    parser.add_argument("--show", action="store_true", help="list the captions and their unseen trigrams")
    args = parser.parse_args()
    data = Path(os.environ.get("DATA", "../shared/data"))
    paired = [
        load_split("flickr8k", data / "flickr8k", "train"),
        load_split("coco-everyday", data / "coco-everyday", "train"),
    ]
    seen = seen_trigrams(training_text(paired, load_text_captions(data / "coco-everyday" / "text-captions.csv")))
    for path in args.captions:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        captions = [r["caption"] for r in records if r.get("status", "ok") == "ok"]
        odd = [(c, unseen) for c in captions if (unseen := unseen_trigrams(tokenize(c), seen))]
        print(f"{path}: {len(odd)} of {len(captions)} captions have a trigram no training sentence has")
        if args.show:
            for caption, unseen in odd:
                print(f"  {caption} | {', '.join(' '.join(t) for t in unseen)}")


if __name__ == "__main__":
    main()
