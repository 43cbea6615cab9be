"""Average the weights of checkpoints that share a starting point (weight averaging, as in SWA and model soups).

    python benchmarks/average_checkpoints.py runs/g5-e4.pt runs/g6-scst/last.pt -o runs/avg.pt
    python benchmarks/average_checkpoints.py runs/g11-scst-e3.pt runs/g13-scst-e2.pt \
        --only decoder. project. -o runs/soup.pt

The checkpoints must share their model config and vocabulary (epochs of one run, runs that continued
one checkpoint).  Floating-point weights are averaged; integer buffers (BatchNorm's batch counts) come
from the last checkpoint, as do the other fields.  ``--only`` averages just the weights under the given
name prefixes and takes the rest from the last checkpoint: what the runs trained, when their frozen parts
are the same function in other numbers (a checkpoint rebuilt from a bundle has its batch norms folded
into the convolutions, so averaging its frozen tagger with a training checkpoint's would break both).
The optimizer and scheduler states are dropped: the result is for ``capcli export`` and ``capcli eval``,
not for ``--resume``.  Its provenance names the files averaged, their SHA-256 and each one's own
provenance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from capcli.bundle import sha256_bytes
from capcli.train.model import ModelConfig
from capcli.train.record import carried_over


def average(paths: list[Path], only: tuple[str, ...] = ()) -> dict:
    payloads = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    last = payloads[-1]
    config = ModelConfig.from_dict(last["config"])  # a checkpoint from before a field has its default
    for path, payload in zip(paths, payloads):
        if ModelConfig.from_dict(payload["config"]) != config or payload["vocab"] != last["vocab"]:
            raise SystemExit(f"{path}: another model config or vocabulary than {paths[-1]}")
    model = {}
    for name, tensor in last["model"].items():
        if tensor.is_floating_point() and (not only or name.startswith(only)):
            model[name] = torch.stack([p["model"][name].float() for p in payloads]).mean(dim=0).to(tensor.dtype)
        else:
            model[name] = tensor
    averaged = {k: v for k, v in last.items() if k not in ("optimizer", "scheduler")}
    averaged["model"] = model
    averaged["finished"] = True
    # The sources' own records (commands, times, quick dev figures) stay whole under "averaged"; only what
    # holds for the mean too (its data, the machine) is lifted to the top.
    sources = [q.get("provenance", {}) for q in payloads]
    provenance = carried_over(sources[-1])
    provenance["recipe"] = "weight average"
    provenance["averaged"] = [
        {"file": str(p), "sha256": sha256_bytes(p.read_bytes()), "epoch": q.get("epoch"), "provenance": source}
        for p, q, source in zip(paths, payloads, sources)
    ]
    if only:
        provenance["averaged_only"] = list(only)
    averaged["provenance"] = provenance
    return averaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--only", nargs="+", default=[], metavar="PREFIX", help="average only these weights")
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("give two or more checkpoints")
    torch.save(average(args.checkpoints, tuple(args.only)), args.out)
    print(f"{args.out}: the mean of {len(args.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
