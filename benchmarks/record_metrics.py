"""Record `capcli eval --json-out` results in a bundle's model.json (provenance.metrics), for its model card.

    python benchmarks/record_metrics.py BUNDLE runs/eval/x-everyday.json runs/eval/x-flickr8k.json

Each result is stored under its data set's name: {"dev_beam3": metrics, "protocol": protocol}.
model.json is not among the hashed files, so the bundle stays valid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def record(bundle: Path, results: list[Path]) -> dict:
    meta_path = bundle / "model.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    metrics = meta.setdefault("provenance", {}).setdefault("metrics", {})
    for path in results:
        result = json.loads(path.read_text(encoding="utf-8"))
        protocol = result["protocol"]
        metrics[protocol["dataset"]] = {f"{protocol['split']}_beam{protocol['beam']}": result["metrics"], **result}
        del metrics[protocol["dataset"]]["metrics"]
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metrics


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(json.dumps(record(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]), indent=1)[:2000])
