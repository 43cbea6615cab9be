"""What a training run says about itself: ``train.json`` and the checkpoint's provenance."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from capcli import __version__
from capcli.datasets import Split
from capcli.machine import cpu_name
from capcli.metrics import QUICK_PROTOCOL

LICENCES = {
    "flickr8k": "Flickr8k: research use only (Hodosh, Young & Hockenmaier 2013); photos from Flickr",
    "flickr30k": "Flickr30k: research use only; photos from Flickr",
    "coco": "COCO captions: CC BY 4.0; photos from Flickr under their own licences",
    "coco-everyday": "COCO captions: CC BY 4.0 (Lin et al. 2014, Chen et al. 2015); photos from Flickr under their "
    "own licences (COCO terms of use)",
}


def hardware(device: torch.device) -> dict[str, Any]:
    """The machine a run trains on: CPU, cores, device (and GPU), torch and Python versions."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "device": str(device),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def carried_over(provenance: dict[str, Any]) -> dict[str, Any]:
    """What of a checkpoint's provenance still holds for a checkpoint made from it without training (a weight
    average, a fitted view gate): its data, their repeats, the machine; not its commands, times or figures."""
    return {key: provenance[key] for key in ("data", "repeat", "hardware") if key in provenance}


class RunInfo:
    """Facts about a run: its command, data, hardware and time.

    ``options`` is the run's TrainOptions as a dict; ``feature_seconds`` the
    time spent filling the feature cache (kept across ``--resume``);
    ``distributed`` the process group ({"backend", "world_size", "nodes"}) of a
    run on several processes (``device`` is then rank 0's); ``initialised_from``
    the provenance summary of the ``--init`` checkpoint the run started from.
    """

    def __init__(
        self,
        options: dict[str, Any],
        command: str,
        train: Split,
        dev: Split,
        device: torch.device,
        feature_seconds: float,
        distributed: dict[str, Any] | None = None,
        initialised_from: dict[str, Any] | None = None,
    ) -> None:
        self.options, self.command, self.train, self.dev, self.device = options, command, train, dev, device
        self.feature_seconds, self.distributed, self.initialised_from = feature_seconds, distributed, initialised_from

    def hardware(self) -> dict[str, Any]:
        info = hardware(self.device)
        if self.distributed:
            info["distributed"] = self.distributed
        return info

    def data(self) -> dict[str, Any]:
        return {
            split.split: {
                "source": split.source,
                "images": len(split.samples),
                "captions": split.n_captions,
                "missing_images": split.missing_images,
                "bad_rows": split.bad_rows,
                "uncaptioned": split.uncaptioned,
            }
            for split in (self.train, self.dev)
        }

    def lineage(self) -> dict[str, Any]:
        """``{"initialised_from": ...}`` for a run started from a checkpoint, else nothing."""
        return {"initialised_from": self.initialised_from} if self.initialised_from else {}

    def provenance(self, history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        beam = self.options["dev_beam"]
        return {
            "dataset": self.options["dataset"],
            "trained_on": "train",
            "selected_on": "dev",
            "data": self.data(),
            "data_dir": self.options["data"],
            "command": self.command,
            "training_seconds": round(self.feature_seconds + sum(h["seconds"] for h in history), 1),
            "feature_seconds": round(self.feature_seconds, 1),
            "hardware": self.hardware(),
            "epochs": len(history),
            "best_epoch": best["epoch"],
            "dev_metrics": best["metrics"],
            "dev_protocol": f"{QUICK_PROTOCOL}; {'greedy' if beam == 1 else f'beam {beam}'}",
            "licence": LICENCES.get(self.options["dataset"], "see the data set's terms"),
            **self.lineage(),
        }

    def record(self, history: list[dict[str, Any]], best: dict[str, Any], seconds: float, vocab_size: int) -> dict:
        """The ``train.json`` document."""
        return {
            "capcli": __version__,
            "command": self.command,
            "options": self.options,
            "data": self.data(),
            "vocab_size": vocab_size,
            "epochs_run": len(history),
            "best": best,
            "seconds": {
                "features": round(self.feature_seconds, 1),
                "epochs": round(sum(h["seconds"] for h in history), 1),
                "this_session": round(seconds, 1),
            },
            "hardware": self.hardware(),
            "dev_protocol": QUICK_PROTOCOL,
            "history": history,
            **self.lineage(),
        }
