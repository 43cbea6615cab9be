"""Interrupting a training run after its first epoch, and comparing two runs' checkpoints (needs torch)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from capcli.train.loop import TrainOptions, train


def train_one_epoch_then_stop(options: TrainOptions) -> None:
    """Start a run and break it off, as Ctrl-C would, once its first epoch is saved."""

    class Interrupt(Exception):
        pass

    def stop_after_first(record: dict) -> None:
        if record["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(options, on_epoch_end=stop_after_first)


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two checkpoints at the same point with bit-identical weights, optimiser moments and schedule."""
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert a["scheduler"] == b["scheduler"]
