"""Average the weights of checkpoints from one training trajectory (weight averaging, as in SWA).

    python benchmarks/average_checkpoints.py runs/g5-e4.pt runs/g6-scst/last.pt -o runs/avg.pt

The checkpoints must share their model config and vocabulary (epochs of one run, or a run and the
checkpoint it continued).  Floating-point weights are averaged; integer buffers (BatchNorm's batch
counts) come from the last checkpoint, as do the other fields.  The optimizer and scheduler states are
dropped: the result is for ``capcli export`` and ``capcli eval``, not for ``--resume``.  Its provenance
names the files averaged and their SHA-256.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from capcli.bundle import sha256_bytes


def average(paths: list[Path]) -> dict:
    payloads = [torch.load(p, map_location="cpu", weights_only=False) for p in paths]
    last = payloads[-1]
    for path, payload in zip(paths, payloads):
        if payload["config"] != last["config"] or payload["vocab"] != last["vocab"]:
            raise SystemExit(f"{path}: another model config or vocabulary than {paths[-1]}")
    model = {}
    for name, tensor in last["model"].items():
        if tensor.is_floating_point():
            model[name] = torch.stack([p["model"][name].float() for p in payloads]).mean(dim=0).to(tensor.dtype)
        else:
            model[name] = tensor
    averaged = {k: v for k, v in last.items() if k not in ("optimizer", "scheduler")}
    averaged["model"] = model
    averaged["finished"] = True
    provenance = dict(last.get("provenance", {}))
    provenance["averaged"] = [
        {"file": str(p), "sha256": sha256_bytes(p.read_bytes()), "epoch": q.get("epoch")}
        for p, q in zip(paths, payloads)
    ]
    averaged["provenance"] = provenance
    return averaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("give two or more checkpoints")
    torch.save(average(args.checkpoints), args.out)
    print(f"{args.out}: the mean of {len(args.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
