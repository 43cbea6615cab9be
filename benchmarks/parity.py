"""Two ways of captioning the same photos, compared photo by photo: the same captions and scores?

    python benchmarks/parity.py                        # search graph vs numpy loop, 320 Flickr8k dev photos
    python benchmarks/parity.py --check float16        # float16 encoder vs float encoder
    python benchmarks/parity.py -n 64 --model DIR --images DIR --device cuda
    python benchmarks/parity.py --repeated-words        # both searches with repeats allowed (not the default)

``--check search`` captions every photo with each decoder of the bundle
(float, int8 on the CPU), greedy and beam 3, once by the numpy loop and once
by the bundle's search graph; they must agree bit for bit (exit 1 when any
differs).  ``--check float16`` captions them with the float decoder behind the
float encoder and behind the encoder computing in float16 (``--precision
float16``), numpy loop; float16 rounding moves scores, so it reports how many
captions stay the same and by how much the scores move (exit 0).  Photos go in
batches of --batch-size (the last batch is partial).  Prints one JSON object;
the photos are read, never copied or written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from capcli.bundle import INT8_DECODER, load_bundle
from capcli.decode import Decoding
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


def compare(
    bundle,
    pixels: np.ndarray,
    ways: dict[str, dict[str, Any]],
    beam: int,
    batch_size: int,
    device: str,
    no_repeated_words: bool = True,
) -> dict[str, object]:
    """Caption ``pixels`` (N, H, W, 3) uint8 each of the two ``ways`` (Captioner options); what agrees, the first
    difference, each way's seconds (encoder included)."""
    found, seconds = {}, {}
    for name, options in ways.items():
        decoding = Decoding(beam, no_repeated_words=no_repeated_words)
        captioner = Captioner(bundle, device=device, lanes=1, decoding=decoding, **options)
        captioner.caption(pixels[:2])  # warm-up: session start and CUDA's first-call costs out of the timing
        started = time.perf_counter()
        found[name] = [
            (c.tokens, c.score)
            for i in range(0, len(pixels), batch_size)
            for c in captioner.caption(pixels[i : i + batch_size])
        ]
        seconds[name] = round(time.perf_counter() - started, 2)
    first, second = ways
    pairs = list(zip(found[first], found[second]))
    differ = [i for i, (a, b) in enumerate(pairs) if a[0] != b[0]]
    return {
        "ways": ways,
        "beam": beam,
        "no_repeated_words": no_repeated_words,
        "photos": len(pairs),
        "same_captions": len(pairs) - len(differ),
        "same_scores": sum(a[1] == b[1] for a, b in pairs),
        "max_score_change": max(abs(a[1] - b[1]) for a, b in pairs),
        "first_difference": None
        if not differ
        else {"photo": differ[0], first: pairs[differ[0]][0], second: pairs[differ[0]][1]},
        "seconds_with_encoder": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", choices=("search", "float16"), default="search")
    parser.add_argument("--model", default=None, help="bundle directory (default: the shipped one)")
    parser.add_argument("--images", type=Path, default=FLICKR8K / "images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("-n", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--repeated-words", action="store_true", help="let any word come again (capcli caption --repeated-words)"
    )
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    photos = dev_photos(args.images, args.n)
    # (N, H, W, 3) uint8: what every captioner takes (a float encoder gets them normalised as the reader does)
    pixels = np.stack([load(str(p), bundle.preprocess, pixels=True).array for p in photos])
    if args.check == "search":
        int8 = INT8_DECODER in bundle.files and args.device == "cpu"
        plans = [
            {"numpy": {"precision": p, "search": "numpy"}, "graph": {"precision": p, "search": "graph"}}
            for p in (("float", "int8") if int8 else ("float",))
        ]
    else:
        plans = [{"float": {"precision": "float"}, "float16": {"precision": "float16"}}]
    checks = [
        compare(bundle, pixels, ways, beam, args.batch_size, args.device, not args.repeated_words)
        for ways in plans
        for beam in (1, 3)
    ]
    identical = all(c["same_captions"] == c["same_scores"] == c["photos"] for c in checks)
    report = {"model": str(bundle.path), "images": str(args.images), "device": args.device, "identical": identical}
    print(json.dumps({**report, "checks": checks}))
    return 0 if identical or args.check == "float16" else 1


if __name__ == "__main__":
    sys.exit(main())
