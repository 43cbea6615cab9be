"""The search graph against the numpy search on real photos: the same captions and scores, bit for bit?

    python benchmarks/search_graph_parity.py                      # 320 Flickr8k dev photos, the shipped model
    python benchmarks/search_graph_parity.py -n 64 --model DIR --images DIR

Captions every photo with each decoder of the bundle (float, int8), greedy and
beam 3, once by the numpy loop and once by the bundle's search graph, in
batches of --batch-size (the last batch is partial), and counts the photos
whose caption and score (the float64 the runtime returns) are identical.
Prints one JSON object; exit 1 when any differs.  The photos are read, never
copied or written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from capcli.bundle import INT8_DECODER, load_bundle
from capcli.images import load
from capcli.runtime import Captioner

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def dev_photos(folder: Path, n: int) -> list[Path]:
    """The first ``n`` photos of the Flickr8k dev split (or of ``folder``, sorted, when it has no split file)."""
    split = folder.parent / "Flickr_8k.devImages.txt"
    if split.is_file():
        names = split.read_text(encoding="utf-8").split()
        return [folder / name for name in names if (folder / name).is_file()][:n]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def compare(bundle, pixels: np.ndarray, precision: str, beam: int, batch_size: int) -> dict[str, object]:
    """Caption ``pixels`` (N, 3, H, W) both ways; counts of identical captions and scores, the first difference."""
    found, seconds = {}, {}
    for search in ("numpy", "graph"):
        captioner = Captioner(bundle, device="cpu", beam=beam, lanes=1, precision=precision, search=search)
        started = time.perf_counter()
        found[search] = [
            (c.tokens, c.score)
            for i in range(0, len(pixels), batch_size)
            for c in captioner.caption(pixels[i : i + batch_size])
        ]
        seconds[search] = round(time.perf_counter() - started, 2)
    pairs = list(zip(found["numpy"], found["graph"]))
    differ = [i for i, (a, b) in enumerate(pairs) if a != b]
    return {
        "precision": precision,
        "beam": beam,
        "photos": len(pairs),
        "same_captions": sum(a[0] == b[0] for a, b in pairs),
        "same_scores": sum(a[1] == b[1] for a, b in pairs),
        "first_difference": None
        if not differ
        else {"photo": differ[0], "numpy": pairs[differ[0]][0], "graph": pairs[differ[0]][1]},
        "seconds_with_encoder": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle directory (default: the shipped one)")
    parser.add_argument("--images", type=Path, default=FLICKR8K / "images")
    parser.add_argument("-n", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    photos = dev_photos(args.images, args.n)
    pixels = np.stack([load(str(p), bundle.preprocess).array for p in photos])  # (N, 3, H, W)
    precisions = ("float", "int8") if INT8_DECODER in bundle.files else ("float",)
    checks = [compare(bundle, pixels, p, beam, args.batch_size) for p in precisions for beam in (1, 3)]
    identical = all(c["same_captions"] == c["same_scores"] == c["photos"] for c in checks)
    print(json.dumps({"model": str(bundle.path), "images": str(args.images), "identical": identical, "checks": checks}))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
