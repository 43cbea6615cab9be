"""Make a grounded checkpoint a two-view decoder: fit its view gate on the training photos.

    python benchmarks/fit_view_gate.py runs/averaged.pt --weight 0.3 -o runs/two-view.pt

On photos the gate calls everyday scenes, the exported decoder ranks words by
``(1 - w) log p(word | photo) + w log p(word | concept)`` (``capcli.train.view_gate``).  The gate is
fitted on Flickr8k train against coco-everyday train (their region features come from, and go to,
runs/cache); its share of each dev set called everyday is printed and recorded in the provenance.
Nothing else of the checkpoint changes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from capcli.bundle import sha256_bytes
from capcli.datasets import load_split
from capcli.train import checkpoint
from capcli.train.grounded import encode_split
from capcli.train.record import carried_over
from capcli.train.view_gate import everyday_share, fit_gate, gate_inputs, with_concept_view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a grounded checkpoint")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--weight", type=float, required=True, help="the concept-only view's weight, 0 < w < 1")
    parser.add_argument("--flickr", type=Path, default=Path("../shared/data/flickr8k"), help="Flickr8k folder")
    parser.add_argument("--everyday", type=Path, default=Path("../shared/data/coco-everyday"), help="coco-everyday")
    parser.add_argument("--cache-dir", default="runs/cache")
    args = parser.parse_args()
    if not 0 < args.weight < 1:
        parser.error("--weight is in (0, 1)")
    payload = checkpoint.load(args.checkpoint)
    model, _ = checkpoint.model_from_checkpoint(payload, source=str(args.checkpoint))
    if not model.config.grounded:
        parser.error(f"{args.checkpoint}: not a grounded checkpoint (no concept input)")
    console = Console(stderr=True)
    inputs = {}
    for dataset, folder in (("flickr8k", args.flickr), ("coco-everyday", args.everyday)):
        for split in ("train", "dev"):
            features, probs = encode_split(model, load_split(dataset, folder, split), Path(args.cache_dir), console)
            inputs[dataset, split] = gate_inputs(model, features, probs)
    gate = fit_gate(inputs["flickr8k", "train"], inputs["coco-everyday", "train"])
    shares = {f"{d} {s}": round(everyday_share(gate, x), 4) for (d, s), x in inputs.items()}
    for name, share in shares.items():
        print(f"{name}: {share:.1%} called everyday")
    out = with_concept_view(payload, gate, args.weight)
    out["provenance"] = carried_over(payload.get("provenance", {})) | {
        "recipe": "view gate",
        "concept_view": args.weight,
        "gate": {"fitted_on": "flickr8k train (0) against coco-everyday train (1)", "called_everyday": shares},
        "from": {
            "file": str(args.checkpoint),
            "sha256": sha256_bytes(args.checkpoint.read_bytes()),
            "provenance": payload.get("provenance", {}),
        },
    }
    checkpoint.save(args.out, out)
    print(f"{args.out}: {args.checkpoint} as a two-view decoder (concept view weight {args.weight})")


if __name__ == "__main__":
    main()
