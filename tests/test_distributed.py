"""Distributed training: 2 gloo processes on the CPU train exactly what one process trains on the same global batches.

The distributed run is stopped after its first epoch (2 processes started with
torch.multiprocessing) and continued with ``torchrun ... -m capcli train
--resume``; a single process trains the same two epochs straight.  Dropout is 0
and the global batches are the same, so the results agree up to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from example_photos import CAPTIONS, NAMES, copy_photos  # noqa: E402

from capcli.train import checkpoint  # noqa: E402
from capcli.train.backbones import build_backbone  # noqa: E402
from capcli.train.distributed import Ranks  # noqa: E402
from capcli.train.features import module_fingerprint  # noqa: E402
from capcli.train.loop import TrainOptions, train  # noqa: E402

# 11 captions in steps of 5: the last step's single caption leaves rank 1 without rows.
# The top backbone stage is fine-tuned, so DDP also averages gradients that pass through the tuned stage.
TINY = dict(
    dataset="csv",
    backbone="tiny",
    pretrained=False,
    feature_dim=16,
    attention_dim=16,
    embed_dim=16,
    hidden_dim=32,
    dropout=0.0,
    finetune_blocks=1,
    batch_by="caption",
    backbone_lr=1e-3,
    min_count=1,
    batch_size=5,
    epochs=2,
    lr=3e-3,
    warmup=0.3,
    patience=0,
    workers=0,
    threads=1,
    device="cpu",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5 example photos with 3, 2, 2, 2 and 2 captions for training; 2 of them again as the dev split."""
    root = tmp_path_factory.mktemp("data")
    copy_photos(root)
    rows = ["image,caption,split"]
    for i, name in enumerate(NAMES):
        rows += [f"{name},{text},train" for text in CAPTIONS[name][: 3 if i == 0 else 2]]
        if i < 2:
            copy_photos(root, [name], prefix="dev-")
            rows.append(f"dev-{name},{CAPTIONS[name][0]},dev")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


class _Stop(Exception):
    pass


def _stop_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 1:
        raise _Stop


def _rank(rank: int, port: int, options: TrainOptions) -> None:
    """One of two processes, as torchrun would start it; it stops after the first epoch and exits normally."""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    gc.disable()  # as if the cyclic collector had not run yet when training ends
    try:
        train(options, on_epoch_end=_stop_after_first_epoch)
    except _Stop:
        pass
    # Nothing that holds the process group outlives train(): left to interpreter shutdown, gloo's
    # threads could abort the finished process ("terminate called without an active exception").
    assert not [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    assert not torch.distributed.is_initialized()
    gc.enable()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(data: Path, tmp_path: Path) -> None:
    cache, distributed, single = tmp_path / "cache", tmp_path / "distributed", tmp_path / "single"
    options = TrainOptions(data=str(data), out=str(distributed), cache_dir=str(cache), **TINY)  # type: ignore[arg-type]
    torch.multiprocessing.spawn(_rank, args=(_free_port(), options), nprocs=2)
    assert checkpoint.load(distributed / "last.pt")["epoch"] == 1
    assert len(list(cache.glob("*.npy"))) == 2  # rank 0 filled the cache (train, dev); rank 1 read it

    # The documented launch continues the run: torchrun, `-m capcli train --resume`.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "capcli",
        "train",
        "--dataset",
        "csv",
        "--data",
        str(data),
        "--out",
        str(distributed),
        "--resume",
        "--cache-dir",
        str(cache),
        "--workers",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    assert done.stderr.count("resuming after epoch 1") == 1  # rank 0 speaks for the run

    train(TrainOptions(data=str(data), out=str(single), cache_dir=str(cache), **TINY))  # type: ignore[arg-type]

    a, b = checkpoint.load(distributed / "last.pt"), checkpoint.load(single / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6 and a["finished"]
    torch.manual_seed(0)  # the run's seed: the initial backbone
    initial = build_backbone("tiny", pretrained=False).state_dict()
    assert not torch.equal(a["model"]["backbone.stages.2.0.weight"], initial["stages.2.0.weight"])  # tuned stage
    # The attention score's bias has no effect (softmax ignores a shift): its gradient is rounding noise,
    # which AdamW's normalisation turns into steps of the learning rate's size.
    # The attention score's bias has no effect (softmax ignores a shift): its gradient is rounding noise,
    # which AdamW's normalisation turns into steps of the learning rate's size.
    for name in b["model"].keys() - {"decoder.attention.score.bias"}:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-5, msg=name)
    for (da, ha), (db, hb) in zip(enumerate(a["history"]), enumerate(b["history"])):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-5), da
        assert ha["dev_loss"] == pytest.approx(hb["dev_loss"], rel=1e-4), db
    assert a["provenance"]["hardware"]["distributed"] == {"backend": "gloo", "world_size": 2, "nodes": 1}
    assert "distributed" not in b["provenance"]["hardware"]

    # Both processes ended with the very parameters rank 0 saved.
    run = json.loads((distributed / "train.json").read_text())
    model, _ = checkpoint.model_from_checkpoint(a)
    assert run["distributed"]["parameters_sha256"] == [module_fingerprint(model)] * 2
    assert len((distributed / "metrics.jsonl").read_text().splitlines()) == 2
    assert not [p.name for p in distributed.iterdir() if ".tmp" in p.name]


def test_a_rank_takes_its_share_of_a_global_batch() -> None:
    rows = torch.arange(7)
    shares = [Ranks(rank=r, world_size=3).share(rows) for r in range(3)]
    assert [s.tolist() for s, _ in shares] == [[0, 1, 2], [3, 4], [5, 6]] and {w for _, w in shares} == {1.0}
    # Fewer rows than ranks: the rank left out runs a stand-in row that weighs nothing.
    part, weight = Ranks(rank=1, world_size=2).share(torch.tensor([9]))
    assert part.tolist() == [9] and weight == 0.0


def test_each_process_takes_its_local_gpu_or_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from capcli.errors import FatalError
    from capcli.train.distributed import _rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _rank_device("auto", 1) == _rank_device("cpu", 1) == torch.device("cpu")  # then gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _rank_device("auto", 1) == _rank_device("cuda", 1) == torch.device("cuda", 1)  # then NCCL
    with pytest.raises(FatalError, match="LOCAL_RANK"):
        _rank_device("cuda:0", 1)  # one GPU for all processes: refused
    with pytest.raises(FatalError, match="2 CUDA GPUs"):
        _rank_device("cuda", 2)
