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

Where it lives: the options in :mod:`capcli.train.options`, the objectives
(cross-entropy, self-critical) in :mod:`capcli.train.objectives`, dev
evaluation in :mod:`capcli.train.dev`; here, the setup (:func:`_start`) and a
short epoch loop over the run's state (:class:`_Run`).

Run folder: ``last.pt``, ``best.pt``, ``metrics.jsonl`` (one line per epoch),
``best_dev_captions.jsonl`` (the best epoch's dev captions, ``capcli eval
--captions`` reads it), ``curves.png`` and ``train.json`` (what ran, on what,
for how long).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from capcli.atomic import atomic_write_text
from capcli.datasets import Split, load_split
from capcli.decode import Decoding
from capcli.errors import FatalError
from capcli.text import Vocab, tokenize
from capcli.train import checkpoint, scst
from capcli.train.data import TrainData, batches, prepare
from capcli.train.dev import evaluate
from capcli.train.distributed import Ranks, session
from capcli.train.features import default_cache_dir, module_fingerprint
from capcli.train.model import CaptionModel
from capcli.train.objectives import Forward, StepLoss, cross_entropy_step, self_critical_step
from capcli.train.options import ARCHITECTURE, LOCAL_OPTIONS, TrainOptions
from capcli.train.record import RunInfo
from capcli.train.reward import CiderD


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
    run = _start(options, state, ranks, device, console)
    for epoch in range(run.first_epoch, options.epochs + 1):
        t_epoch = time.time()
        steps = list(batches(run.train_data, options.batch_size, run.by_image, options.seed, epoch))
        # Dropout masks depend only on (seed, epoch, rank), like the batches: a resumed run repeats them.
        torch.manual_seed((options.seed * 100_003 + epoch) * 1_009 + ranks.rank)
        train_stats = _train_epoch(
            run.model, run.step_loss, steps, options, run.optimizer, run.scheduler, epoch, console, ranks
        )
        run.step += run.steps_per_epoch
        run.check_replicas(epoch)
        # Rank 0 evaluates, saves and decides whether to stop; the others hear the outcome.
        record, finished = ranks.from_main(lambda: run.end_epoch(epoch, train_stats, t_epoch))
        if on_epoch_end is not None:
            on_epoch_end(record)
        if finished:
            break
    return ranks.from_main(lambda: run.end(started))


@dataclass
class _Run:
    """What a training run carries from epoch to epoch (built by :func:`_start`)."""

    options: TrainOptions
    ranks: Ranks
    console: Console
    out: Path
    model: CaptionModel
    vocab: Vocab
    info: RunInfo
    train_data: TrainData
    dev_data: TrainData | None  # rank 0's only
    by_image: bool  # batches hold all captions of their images
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step_loss: StepLoss
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "metrics": {}})
    first_epoch: int = 1
    step: int = 0
    fingerprints: list[str] = field(default_factory=list)  # each process's parameters, when distributed

    def check_replicas(self, epoch: int) -> None:
        """DDP keeps the replicas equal; check it before rank 0 saves its own."""
        if not self.ranks.distributed:
            return
        self.fingerprints = self.ranks.gather(module_fingerprint(self.model))
        if len(set(self.fingerprints)) > 1:
            raise FatalError(
                f"epoch {epoch}: the processes' model parameters differ; the checkpoint would be rank 0's alone"
            )

    def end_epoch(self, epoch: int, train_stats: dict[str, float], t_epoch: float) -> tuple[dict[str, Any], bool]:
        """Rank 0: evaluate on the dev split, save the checkpoints, say whether the run is finished."""
        options, model, config = self.options, self.model, self.model.config
        assert self.dev_data is not None
        dev_stats, dev_captions = evaluate(
            model, self.dev_data, self.vocab, config, options.dev_beam, options.label_smoothing
        )
        record = {
            "epoch": epoch,
            "step": self.step,
            **train_stats,
            **dev_stats,
            "seconds": round(time.time() - t_epoch, 1),
        }
        self.history.append(record)
        improved = dev_stats["dev_CIDEr"] > self.best["metrics"].get("dev_CIDEr", -1.0)
        if improved:
            self.best = {"epoch": epoch, "metrics": dev_stats}
        finished = epoch == options.epochs or (options.patience > 0 and epoch - self.best["epoch"] >= options.patience)
        payload = {
            "config": config.to_dict(),
            "vocab": list(self.vocab.tokens),
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step": self.step,
            "finished": finished,
            "options": dataclasses.asdict(options),
            "history": self.history,
            "best": self.best,
            "provenance": self.info.provenance(self.history, self.best),
        }
        if improved:
            checkpoint.save(self.out / "best.pt", payload)
            _write_jsonl(
                self.out / "best_dev_captions.jsonl",
                [{"source": source, "caption": text} for source, text in dev_captions.items()],
            )
        checkpoint.save(self.out / "last.pt", payload)
        _write_jsonl(self.out / "metrics.jsonl", self.history)
        self.console.print(_epoch_line(record, options.epochs, improved), markup=False, highlight=False)
        return record, finished

    def end(self, started: float) -> dict[str, Any]:
        """Rank 0: the curves, ``train.json`` and the closing line; returns the ``train.json`` record."""
        options, config, best = self.options, self.model.config, self.best
        if self.history[-1]["epoch"] < options.epochs:
            self.console.print(f"early stop: no better dev CIDEr for {options.patience} epochs")
        from capcli.train.plot import plot_history

        plot_history(
            self.history, self.out / "curves.png", title=f"{options.dataset} · {config.backbone} · {config.decoder}"
        )
        record = self.info.record(self.history, best, time.time() - started, len(self.vocab))
        if self.fingerprints:
            record["distributed"] = {**self.ranks.describe(), "parameters_sha256": self.fingerprints}
        atomic_write_text(self.out / "train.json", json.dumps(record, indent=2) + "\n")
        self.console.print(
            f"best dev CIDEr {best['metrics'].get('dev_CIDEr', float('nan')):.3f} "
            f"(BLEU-4 {best['metrics'].get('dev_BLEU-4', float('nan')):.3f}) at epoch {best['epoch']}; "
            f"checkpoints in {self.out}"
        )
        return record


def _start(
    options: TrainOptions, state: dict[str, Any] | None, ranks: Ranks, device: torch.device, console: Console
) -> _Run:
    """Splits, model and vocabulary, cached features, optimiser and objective: a run ready for its first epoch
    (or, with ``state``, for the epoch after the checkpoint's)."""
    train_split, dev_split = (
        load_split(
            options.dataset, Path(options.data), split, Path(options.images) if options.images else None
        ).limited(options.limit)
        for split in ("train", "dev")
    )
    for split in (train_split, dev_split):
        console.print(split.describe())
        if not split.samples:
            raise FatalError(f"no usable images in the {split.split} split of {split.source}")
    model, vocab, options, init_provenance = _model(options, state, train_split)
    config = model.config
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
        return prepare(
            split,
            vocab,
            config.backbone,
            config.max_len,
            frozen,
            identity,
            cache_dir=cache_dir,
            workers=options.workers,
            device=device,
            console=console,
        )

    # Rank 0 fills the feature cache, the others then read it; only rank 0 evaluates on the dev split.
    train_data, dev_data = ranks.in_turns(lambda: (data(train_split), data(dev_split) if ranks.main else None))
    feature_seconds = time.time() - t0

    self_critical = options.objective == "cider"
    # Self-critical steps sample per image; fine-tuning runs the tuned stages once per image.
    by_image = (
        self_critical or options.batch_by == "image" or (options.batch_by == "auto" and config.finetune_blocks > 0)
    )
    steps_per_epoch = len(list(batches(train_data, options.batch_size, by_image, options.seed, epoch=1)))
    optimizer = _optimizer(model, tuned, options)
    scheduler = one_cycle(optimizer, options.epochs * steps_per_epoch, options.warmup)
    forward: nn.Module = (
        # The runtime's rules with --repeated-words: samples may say a word twice, as before that rule became the
        # default (recorded recipes stay the same).
        scst.Sampler(model, tuned, Decoding(no_repeated_words=False).spec(vocab, config.max_len), len(vocab)).to(device)
        if self_critical
        else Forward(model, tuned)
    )
    if ranks.distributed:
        forward = DistributedDataParallel(forward, device_ids=[device] if device.type == "cuda" else None)
    if self_critical:
        reward = CiderD([[tokenize(c) for c in s.captions] for s in train_data.samples], mark_end=options.score_end)
        step_loss = self_critical_step(forward, train_data, options, ranks, reward, vocab)
    else:
        step_loss = cross_entropy_step(forward, train_data, options, ranks)

    info = RunInfo(
        dataclasses.asdict(options),
        options.command(),
        train_split,
        dev_split,
        device,
        feature_seconds,
        ranks.describe() if ranks.distributed else None,
        init_provenance,
    )
    run = _Run(
        options,
        ranks,
        console,
        Path(options.out),
        model,
        vocab,
        info,
        train_data,
        dev_data,
        by_image,
        steps_per_epoch,
        optimizer,
        scheduler,
        step_loss,
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.history, run.best = state["history"], state["best"]
        run.first_epoch, run.step = state["epoch"] + 1, state["step"]
        console.print(f"resuming after epoch {state['epoch']} (step {run.step:,})")
        # The run's command and feature time are those of its first session.
        info.command = state["provenance"]["command"]
        info.feature_seconds += state["provenance"]["feature_seconds"]
    return run


def _model(
    options: TrainOptions, state: dict[str, Any] | None, train_split: Split
) -> tuple[CaptionModel, Vocab, TrainOptions, dict[str, Any] | None]:
    """The model to train and its vocabulary: the checkpoint's (resume), ``--init``'s, or a new one."""
    if state is not None:
        model, vocab = checkpoint.model_from_checkpoint(state)
        return model, vocab, options, state["provenance"].get("initialised_from")
    if options.init:
        return _initialise(options)
    if options.objective == "cider":
        raise FatalError(
            "self-critical training (--objective cider) starts from a trained model: "
            "pass --init with a checkpoint of a cross-entropy run, e.g. --init runs/f8k/best.pt"
        )
    vocab = Vocab.build((tokenize(c) for s in train_split.samples for c in s.captions), options.min_count)
    return CaptionModel(options.model_config(len(vocab))), vocab, options, None


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
    options = dataclasses.replace(
        options,
        **{name: getattr(model.config, name) for name in ARCHITECTURE},
        min_count=saved.get("min_count", options.min_count),
    )
    provenance = payload.get("provenance", {})
    summary = {
        "checkpoint": str(options.init),
        **{
            key: provenance[key]
            for key in (
                "command",
                "training_seconds",
                "hardware",
                "epochs",
                "best_epoch",
                "dev_metrics",
                "dev_protocol",
                "initialised_from",
            )
            if key in provenance
        },
    }
    return model, vocab, options, summary


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
    for params, lr in (
        (head, options.lr),
        ([p for p in model.backbone.parameters() if id(p) in tuned_ids], options.backbone_lr),
    ):
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": options.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


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
    columns = (
        TextColumn(f"epoch {epoch}/{options.epochs}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stat]}"),
    )
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


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    train = f"reward {record['train_reward']:.3f}" if "train_reward" in record else f"loss {record['train_loss']:.3f}"
    return (
        f"epoch {record['epoch']}/{epochs}  {train}  dev loss {record['dev_loss']:.3f}  "
        f"BLEU-4 {record['dev_BLEU-4']:.3f}  CIDEr {record['dev_CIDEr']:.3f}  lr {record['lr']:.2e}  "
        f"{record['seconds']:.0f} s" + ("  [best]" if improved else "")
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
