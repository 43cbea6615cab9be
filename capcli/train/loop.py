"""The training run: data -> vocabulary -> cached features -> epochs -> checkpoints.

One epoch: every training caption once, teacher forcing, cross-entropy over
the words (padding masked, optional label smoothing) plus the doubly
stochastic attention penalty ``lambda * mean((1 - sum_t alpha)^2)``, AdamW,
gradient-norm clipping and a one-cycle learning rate.  After each epoch the
dev split is captioned with the runtime's own search rules
(:mod:`capcli.decode`) and scored (BLEU-4, CIDEr-D, Java-free); the best dev
CIDEr is kept in ``best.pt`` and training stops after ``patience`` epochs
without a new best.  ``last.pt`` is written after every epoch and ``--resume``
continues from it exactly as if the run had not stopped.

``--objective cider`` (with ``--init``, a model trained as above) replaces the
cross-entropy by self-critical sequence training on CIDEr-D
(:mod:`capcli.train.scst`): each image of a step is captioned ``samples``
times by sampling, and each sample's log-probability is pushed up or down by
how much its CIDEr-D beats the image's other samples.

The frozen part of the backbone runs once per image (:mod:`capcli.train.features`);
with ``finetune_blocks > 0`` its top stages run in every step on the cached
input, once per image in the batch, shared by that image's captions.

Run folder: ``last.pt``, ``best.pt``, ``metrics.jsonl`` (one line per epoch),
``best_dev_captions.jsonl`` (the best epoch's dev captions, ``capcli eval
--captions`` reads it), ``curves.png`` and ``train.json`` (what ran, on what,
for how long).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from capcli import decode
from capcli.errors import FatalError
from capcli.metrics import quick_scores
from capcli.text import Vocab, detokenize, tokenize
from capcli.train import checkpoint, scst
from capcli.atomic import atomic_write_text
from capcli.train.data import TrainData, batches, prepare
from capcli.datasets import Split, load_split
from capcli.train.distributed import Ranks, session
from capcli.train.features import default_cache_dir, module_fingerprint
from capcli.train.model import CaptionModel, ModelConfig, region_grid
from capcli.train.record import RunInfo
from capcli.train.reward import CiderD

# Options that describe the machine, not the run: --resume takes them from the new command line.
LOCAL_OPTIONS = ("out", "device", "workers", "threads", "cache_dir")
# Options that --init takes from the checkpoint it starts from: they describe its model.
ARCHITECTURE = ("backbone", "pretrained", "decoder", "feature_dim", "attention_dim", "embed_dim", "hidden_dim", "dropout",
                "max_len")  # fmt: skip
OBJECTIVES = ("xent", "cider")


@dataclass
class TrainOptions:
    dataset: str
    data: str
    out: str
    images: str | None = None
    # model
    backbone: str = "efficientnet-lite2"
    pretrained: bool = True
    decoder: str = "gru"
    feature_dim: int = 512
    attention_dim: int = 512
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.5
    finetune_blocks: int = 0
    init: str | None = None  # start from this checkpoint's model and vocabulary
    # text
    min_count: int = 5
    max_len: int = 20
    # optimisation
    epochs: int = 10
    batch_size: int = 64  # captions per step
    batch_by: str = "auto"  # "caption" | "image" (all captions of each image together) | "auto"
    lr: float = 4e-4
    backbone_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps spent rising to the peak learning rate
    clip: float = 5.0
    label_smoothing: float = 0.0
    attention_penalty: float = 1.0
    objective: str = "xent"  # "xent" (teacher forcing) | "cider" (self-critical, from --init)
    samples: int = 5  # captions sampled per image by the cider objective
    score_end: bool = True  # the cider reward counts a caption's end as a word (see capcli.train.reward)
    patience: int = 3  # epochs without a better dev CIDEr before stopping; 0 = never stop early
    dev_beam: int = 1  # dev decoding: 1 = greedy
    limit: int | None = None  # debug: first N images of each split
    seed: int = 0
    # machine
    device: str = "auto"
    workers: int = 2
    threads: int | None = None  # torch CPU threads; None: torch's default
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.samples < 2:  # a sample's baseline is the mean of the image's other samples
            raise ValueError(f"samples must be at least 2, not {self.samples}")

    def command(self) -> str:
        """The ``capcli train`` command line that gives these options (machine-local ones left out)."""
        args = ["capcli", "train"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in LOCAL_OPTIONS[1:] or value == f.default:
                continue
            if isinstance(value, bool):
                args.append(f"--{'' if value else 'no-'}{f.name.replace('_', '-')}")
            else:
                args += [f"--{f.name.replace('_', '-')}", str(value)]
        return shlex.join(args)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size, backbone=self.backbone, pretrained=self.pretrained, decoder=self.decoder,
            feature_dim=self.feature_dim, attention_dim=self.attention_dim, embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim, dropout=self.dropout, max_len=self.max_len,
            finetune_blocks=self.finetune_blocks,
        )  # fmt: skip


def train(
    options: TrainOptions,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a training run; returns the ``train.json`` record.

    Under ``torchrun`` (several processes) every process calls this; see
    :mod:`capcli.train.distributed` for who does what.
    """
    with session(options.device) as (ranks, device):
        if not ranks.main:  # rank 0 speaks for the run
            console = Console(stderr=True, quiet=True)
        return _train(options, ranks, device, resume, console or Console(stderr=True, soft_wrap=True), on_epoch_end)


def _train(
    options: TrainOptions,
    ranks: Ranks,
    device: torch.device,
    resume: bool,
    console: Console,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    started = time.time()
    out = Path(options.out)
    state = ranks.from_main(lambda: _open_run(out, resume))
    if state is not None:
        saved = TrainOptions(**state["options"])
        options = dataclasses.replace(saved, **{k: getattr(options, k) for k in LOCAL_OPTIONS})
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)

    train_split, dev_split = (
        load_split(options.dataset, Path(options.data), split, Path(options.images) if options.images else None)
        .limited(options.limit)
        for split in ("train", "dev")
    )
    for split in (train_split, dev_split):
        console.print(split.describe())
        if not split.samples:
            raise FatalError(f"no usable images in the {split.split} split of {split.source}")

    init_provenance: dict[str, Any] | None = None
    if state is not None:
        model, vocab = checkpoint.model_from_checkpoint(state)
        config = model.config
        init_provenance = state["provenance"].get("initialised_from")
    elif options.init:
        model, vocab, options, init_provenance = _initialise(options)
        config = model.config
    elif options.objective == "cider":
        raise FatalError("self-critical training (--objective cider) starts from a trained model: "
                         "pass --init with a checkpoint of a cross-entropy run, e.g. --init runs/f8k/best.pt")
    else:
        vocab = Vocab.build((tokenize(c) for s in train_split.samples for c in s.captions), options.min_count)
        config = options.model_config(len(vocab))
        model = CaptionModel(config)
    model.to(device)
    frozen, tuned = model.frozen_and_trainable_backbone()
    frozen.requires_grad_(False)
    processes = f"; {ranks.world_size} processes ({ranks.backend})" if ranks.distributed else ""
    console.print(
        f"vocabulary: {len(vocab):,} tokens (words seen >= {options.min_count} times); "
        f"backbone {config.backbone}, {options.finetune_blocks} top stages fine-tuned; device {device}{processes}"
        + (f"; starting from {options.init}" if options.init else "")
    )

    t0 = time.time()
    identity = {"backbone": config.backbone, "frozen_stages": len(frozen), "weights": module_fingerprint(frozen)}
    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()

    def data(split: Split) -> TrainData:
        return prepare(split, vocab, config.backbone, config.max_len, frozen, identity, cache_dir=cache_dir,
                       workers=options.workers, device=device, console=console)  # fmt: skip

    # Rank 0 fills the feature cache, the others then read it; only rank 0 evaluates on the dev split.
    train_data, dev_data = ranks.in_turns(lambda: (data(train_split), data(dev_split) if ranks.main else None))
    feature_seconds = time.time() - t0

    self_critical = options.objective == "cider"
    # Self-critical steps sample per image; fine-tuning runs the tuned stages once per image.
    by_image = self_critical or options.batch_by == "image" or (options.batch_by == "auto" and config.finetune_blocks > 0)
    steps_per_epoch = len(list(batches(train_data, options.batch_size, by_image, options.seed, epoch=1)))
    optimizer = _optimizer(model, tuned, options)
    scheduler = one_cycle(optimizer, options.epochs * steps_per_epoch, options.warmup)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "metrics": {}}
    first_epoch, step = 1, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best = state["history"], state["best"]
        first_epoch, step = state["epoch"] + 1, state["step"]
        console.print(f"resuming after epoch {state['epoch']} (step {step:,})")
    forward: nn.Module = scst.Sampler(model, tuned, search_spec(vocab, config), len(vocab)).to(device) \
        if self_critical else _Forward(model, tuned)  # fmt: skip
    if ranks.distributed:
        forward = DistributedDataParallel(forward, device_ids=[device] if device.type == "cuda" else None)
    if self_critical:
        reward = CiderD([[tokenize(c) for c in s.captions] for s in train_data.samples], mark_end=options.score_end)
        step_loss = _self_critical_step(forward, train_data, options, ranks, reward, vocab)
    else:
        step_loss = _cross_entropy_step(forward, train_data, options, ranks)

    run = RunInfo(dataclasses.asdict(options), options.command(), train_split, dev_split, device, feature_seconds,
                  ranks.describe() if ranks.distributed else None, init_provenance)  # fmt: skip
    if state is not None:  # the run's command and feature time are those of its first session
        run.command = state["provenance"]["command"]
        run.feature_seconds += state["provenance"]["feature_seconds"]
    fingerprints: list[str] = []
    for epoch in range(first_epoch, options.epochs + 1):
        t_epoch = time.time()
        steps = list(batches(train_data, options.batch_size, by_image, options.seed, epoch))
        # Dropout masks depend only on (seed, epoch, rank), like the batches: a resumed run repeats them.
        torch.manual_seed((options.seed * 100_003 + epoch) * 1_009 + ranks.rank)
        train_stats = _train_epoch(model, step_loss, steps, options, optimizer, scheduler, epoch, console, ranks)
        step += steps_per_epoch
        if ranks.distributed:  # DDP keeps the replicas equal; check it before rank 0 saves its own
            fingerprints = ranks.gather(module_fingerprint(model))
            if len(set(fingerprints)) > 1:
                raise FatalError(f"epoch {epoch}: the processes' model parameters differ; the checkpoint would be "
                                 "rank 0's alone")  # fmt: skip

        def end_epoch() -> tuple[dict[str, Any], bool]:
            nonlocal best
            assert dev_data is not None
            dev_stats, dev_captions = evaluate(model, dev_data, vocab, config, options.dev_beam,
                                               options.label_smoothing)  # fmt: skip
            record = {"epoch": epoch, "step": step, **train_stats, **dev_stats,
                      "seconds": round(time.time() - t_epoch, 1)}  # fmt: skip
            history.append(record)
            improved = dev_stats["dev_CIDEr"] > best["metrics"].get("dev_CIDEr", -1.0)
            if improved:
                best = {"epoch": epoch, "metrics": dev_stats}
            finished = epoch == options.epochs or (options.patience > 0 and epoch - best["epoch"] >= options.patience)
            payload = {
                "config": config.to_dict(), "vocab": list(vocab.tokens), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "step": step, "finished": finished, "options": dataclasses.asdict(options),
                "history": history, "best": best, "provenance": run.provenance(history, best),
            }  # fmt: skip
            if improved:
                checkpoint.save(out / "best.pt", payload)
                _write_jsonl(out / "best_dev_captions.jsonl",
                             [{"source": source, "caption": text} for source, text in dev_captions.items()])
            checkpoint.save(out / "last.pt", payload)
            _write_jsonl(out / "metrics.jsonl", history)
            console.print(_epoch_line(record, options.epochs, improved), markup=False, highlight=False)
            return record, finished

        # Rank 0 evaluates, saves and decides whether to stop; the others hear the outcome.
        record, finished = ranks.from_main(end_epoch)
        if on_epoch_end is not None:
            on_epoch_end(record)
        if finished:
            break

    def end_run() -> dict[str, Any]:
        if history[-1]["epoch"] < options.epochs:
            console.print(f"early stop: no better dev CIDEr for {options.patience} epochs")
        from capcli.train.plot import plot_history

        plot_history(history, out / "curves.png", title=f"{options.dataset} · {config.backbone} · {config.decoder}")
        record = run.record(history, best, time.time() - started, len(vocab))
        if fingerprints:
            record["distributed"] = {**ranks.describe(), "parameters_sha256": fingerprints}
        atomic_write_text(out / "train.json", json.dumps(record, indent=2) + "\n")
        console.print(
            f"best dev CIDEr {best['metrics'].get('dev_CIDEr', float('nan')):.3f} "
            f"(BLEU-4 {best['metrics'].get('dev_BLEU-4', float('nan')):.3f}) at epoch {best['epoch']}; "
            f"checkpoints in {out}"
        )
        return record

    return ranks.from_main(end_run)


def _open_run(out: Path, resume: bool) -> dict[str, Any] | None:
    """The run folder, created if need be, and its last checkpoint when resuming."""
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        state = checkpoint.load(out / "last.pt")
        if state["finished"]:
            raise FatalError(f"the run in {out} has already finished (epoch {state['epoch']}): nothing to resume")
        return state
    if (out / "last.pt").exists():
        raise FatalError(f"{out} already holds a run: continue it with --resume, or choose another --out")
    return None


def _initialise(options: TrainOptions) -> tuple[CaptionModel, Vocab, TrainOptions, dict[str, Any]]:
    """The model and vocabulary of ``options.init``; the options describing them are taken from it too."""
    payload = checkpoint.load(options.init)
    model, vocab = checkpoint.model_from_checkpoint(payload, source=str(options.init))
    model.config = dataclasses.replace(model.config, finetune_blocks=options.finetune_blocks)
    saved = payload.get("options", {})
    options = dataclasses.replace(options, **{name: getattr(model.config, name) for name in ARCHITECTURE},
                                  min_count=saved.get("min_count", options.min_count))  # fmt: skip
    provenance = payload.get("provenance", {})
    summary = {"checkpoint": str(options.init), **{key: provenance[key] for key in (
        "command", "training_seconds", "hardware", "epochs", "best_epoch", "dev_metrics", "dev_protocol",
        "initialised_from") if key in provenance}}  # fmt: skip
    return model, vocab, options, summary


def search_spec(vocab: Vocab, config: ModelConfig) -> decode.SearchSpec:
    """The runtime's search rules (:meth:`capcli.decode.SearchSpec.runtime`): dev captions are
    decoded as ``capcli caption`` will decode them."""
    return decode.SearchSpec.runtime(vocab, config.max_len)


def _grid(tuned: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Cached frozen output (B, C', h', w') -> region grid (B, L, C) through the tuned stages."""
    return region_grid(tuned(inputs))  # (B, L, C)


def _autocast(device: torch.device):
    # bf16 on CUDA: no loss scaling needed; the CPU stays in float32.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class _Forward(nn.Module):
    """Cached frozen output -> logits: the tuned backbone stages and the captioner as one module (for DDP)."""

    def __init__(self, model: CaptionModel, tuned: nn.Module) -> None:
        super().__init__()
        self.model, self.tuned = model, tuned

    def forward(
        self, inputs: torch.Tensor, local: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (N, C', h', w') of N images; local (B,) image of each caption; captions (B, T)."""
        grid = _grid(self.tuned, inputs)[local]  # (B, L, C)
        return self.model(grid, captions)  # (B, T-1, V), (B, T-1, L)


def _losses(
    forward: nn.Module, data: TrainData, rows: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over caption ``rows`` (a CPU tensor): (token cross-entropy, attention penalty per caption).

    Sums, not means, so that a batch split across processes adds up to the
    whole batch's loss; the caller divides by the whole batch's counts.
    """
    device = data.captions.device
    images, local = torch.unique(data.image_of[rows], return_inverse=True)
    length = int(data.lengths[rows].max())
    captions = data.captions[rows.to(device), :length]  # (B, T)
    with _autocast(device):
        logits, alphas = forward(data.inputs(images), local.to(device), captions)  # (B, T-1, V), (B, T-1, L)
    targets = captions[:, 1:]  # (B, T-1)
    xent = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=0, label_smoothing=label_smoothing,
                           reduction="sum")  # fmt: skip
    mask = (targets != 0).unsqueeze(2)  # (B, T-1, 1): padding steps attend to nothing
    coverage = (alphas.float() * mask).sum(dim=1)  # (B, L)
    return xent, ((1.0 - coverage) ** 2).mean(dim=1).sum()


def _targets(data: TrainData, rows: torch.Tensor) -> int:
    """Predicted tokens of caption ``rows``: the words and <end>."""
    return int((data.lengths[rows] - 1).sum())


def _freeze_batchnorm(module: nn.Module) -> None:
    # Fine-tuned blocks keep their ImageNet statistics: batches of a few images would skew them.
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# -- optimisation ------------------------------------------------------------------------


def _optimizer(model: CaptionModel, tuned: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only; the tuned backbone stages at their own learning rate."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    tuned_ids = {id(p) for p in tuned.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = []
    for params, lr in ((head, options.lr), ([p for p in model.backbone.parameters() if id(p) in tuned_ids],
                                             options.backbone_lr)):  # fmt: skip
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": options.weight_decay},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW([g for g in groups if g["params"]])


@dataclass
class StepLoss:
    """One training step's objective: ``loss(batch)`` -> (loss to back-propagate, this rank's part of ``stats``)."""

    loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    stats: tuple[str, ...]  # names of the per-step means it reports, averaged over the epoch


def _cross_entropy_step(forward: nn.Module, data: TrainData, options: TrainOptions, ranks: Ranks) -> StepLoss:
    def loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, weight = ranks.share(batch)
        xent, attention = _losses(forward, data, rows, options.label_smoothing)
        # Means over the whole batch; DDP averages the ranks' gradients, hence the world size.
        means = torch.stack([xent / _targets(data, batch), attention / len(batch)]) * weight  # (2,)
        return ranks.world_size * (means[0] + options.attention_penalty * means[1]), means.detach()

    return StepLoss(loss, ("train_loss", "train_attention"))


def _self_critical_step(
    forward: nn.Module, data: TrainData, options: TrainOptions, ranks: Ranks, reward: CiderD, vocab: Vocab
) -> StepLoss:
    device = data.captions.device

    def loss(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.unique(data.image_of[batch])  # (N,) the step's images; each rank samples for its share
        mine, weight = ranks.share(images)
        with _autocast(device):
            total, rewards = scst.self_critical_loss(forward, data.inputs(mine), mine.tolist(), options.samples,
                                                     reward, vocab)  # fmt: skip
        n = len(images) * options.samples  # sampled captions in the whole step
        mean_reward = torch.tensor([weight * rewards / n], device=device)
        return ranks.world_size * weight * total / n, mean_reward

    return StepLoss(loss, ("train_reward",))


def one_cycle(optimizer: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """Warm up for a ``warmup`` fraction of ``steps``, then anneal (cosine) to near zero."""
    # OneCycleLR divides by its phases' lengths in steps: a debug run of a few steps gets a longer warmup.
    steps = max(2, steps)
    if warmup * steps <= 1.5:
        warmup = min(1.5 / steps, 0.75)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps, pct_start=warmup
    )


def _train_epoch(
    model: CaptionModel,
    step_loss: StepLoss,
    steps: list[torch.Tensor],
    options: TrainOptions,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    console: Console,
    ranks: Ranks,
) -> dict[str, float]:
    """One pass over ``steps`` (global batches; each rank trains on its share of every one)."""
    model.train()
    _freeze_batchnorm(model.backbone)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    totals: torch.Tensor | float = 0.0  # this rank's part of the per-step stats, summed
    columns = (TextColumn(f"epoch {epoch}/{options.epochs}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[stat]}"))  # fmt: skip
    label = step_loss.stats[0].removeprefix("train_")
    lr = 0.0
    show = console.is_terminal and not console.quiet
    with Progress(*columns, console=console, transient=True, disable=not show) as progress:
        task = progress.add_task("train", total=len(steps), stat="")
        for i, batch in enumerate(steps):
            loss, stats = step_loss.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, options.clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            totals = totals + stats
            if show and i % 20 == 0:  # reading the stats waits for the GPU: not every step
                progress.update(task, stat=f"{label} {float(totals[0]) * ranks.world_size / (i + 1):.3f}")
            progress.advance(task)
    sums = ranks.sum(torch.as_tensor(totals)).tolist()
    return {"lr": lr, **{name: total / len(steps) for name, total in zip(step_loss.stats, sums)}}


# -- dev evaluation ----------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: CaptionModel,
    data: TrainData,
    vocab: Vocab,
    config: ModelConfig,
    beam: int = 1,
    label_smoothing: float = 0.0,
    batch_size: int = 128,
) -> tuple[dict[str, float], dict[str, str]]:
    """Dev loss (teacher forcing) and BLEU-4/CIDEr of captions decoded like the runtime does.

    Returns ({"dev_loss", "dev_BLEU-4", "dev_CIDEr"}, {image path: caption}).
    """
    model.eval()
    _, tuned = model.frozen_and_trainable_backbone()
    forward = _Forward(model, tuned)
    total = torch.zeros((), device=data.captions.device)
    for start in range(0, len(data.captions), 2 * batch_size):
        rows = torch.arange(start, min(start + 2 * batch_size, len(data.captions)))
        total += _losses(forward, data, rows, label_smoothing)[0]
    spec = search_spec(vocab, config)
    hypotheses: dict[str, str] = {}
    for start in range(0, len(data.samples), batch_size):
        images = torch.arange(start, min(start + batch_size, len(data.samples)))
        for i, hyp in zip(images.tolist(), _search(model, tuned, data.inputs(images), spec, beam)):
            hypotheses[str(data.samples[i].image)] = detokenize(vocab.decode(hyp.ids))
    references = {str(s.image): list(s.captions) for s in data.samples}
    scores = quick_scores(references, hypotheses)
    dev_loss = float(total) / _targets(data, torch.arange(len(data.captions)))  # per predicted token
    return {"dev_loss": dev_loss, **{f"dev_{k}": v for k, v in scores.items()}}, hypotheses


def _search(
    model: CaptionModel, tuned: nn.Module, inputs: torch.Tensor, spec: decode.SearchSpec, beam: int
) -> list[decode.Hypothesis]:
    """capcli.decode's greedy/beam search driving the PyTorch decoder step."""
    device = inputs.device
    with _autocast(device):
        features = model.features(_grid(tuned, inputs))  # (B, L, D)
        keys, state = model.decoder.init(features)  # (B, A, L), each (B, H)
    names = decode.STATE_NAMES[model.config.decoder]

    def step(tokens: np.ndarray, st: decode.State, images: np.ndarray) -> tuple[np.ndarray, decode.State, np.ndarray]:
        which = torch.from_numpy(images).to(device)
        with _autocast(device):
            logits, new, alpha = model.decoder.step(
                torch.from_numpy(tokens).to(device), tuple(torch.from_numpy(st[n]).to(device) for n in names),
                features[which], keys[which],
            )  # fmt: skip
        logprobs = torch.log_softmax(logits.float(), dim=1)  # (N, V)
        return logprobs.cpu().numpy(), {n: s.float().cpu().numpy() for n, s in zip(names, new)}, alpha.float().cpu().numpy()

    initial = {n: s.float().cpu().numpy() for n, s in zip(names, state)}
    if beam > 1:
        return decode.beam_search(step, initial, spec, beam=beam)
    return decode.greedy(step, initial, spec)


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    train = f"reward {record['train_reward']:.3f}" if "train_reward" in record else f"loss {record['train_loss']:.3f}"
    return (
        f"epoch {record['epoch']}/{epochs}  {train}  dev loss {record['dev_loss']:.3f}  "
        f"BLEU-4 {record['dev_BLEU-4']:.3f}  CIDEr {record['dev_CIDEr']:.3f}  lr {record['lr']:.2e}  "
        f"{record['seconds']:.0f} s" + ("  [best]" if improved else "")
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
