"""Grounded training: an attention decoder that also reads what the tagger recognises.

The recipe behind the everyday-photo model (issue "Everyday photos"):

- the **encoder** is a trained captioner's (``--init``): its backbone, fine-tuned
  top stages and region projection stay frozen, so every photo's projected
  region features are computed once;
- the **tagger** is the backbone's own untouched ImageNet head beside it
  (:mod:`capcli.train.tagger`); its top ``concepts`` classes, weighted by their
  renormalised probabilities, are the decoder's *concept* input;
- the **decoder** is trained anew, with a vocabulary over all the text, on a
  mix of paired photos (Flickr8k train, the everyday train photos) and
  caption-only sentences (COCO text), whose concepts are inferred from their
  words (:mod:`capcli.train.concepts`) and whose region features are zeros.
  Paired photos lose their regions (``visual_dropout``) or their concept
  (``concept_dropout``) now and then, so the decoder learns to caption from
  either alone as well as from both.

One epoch is every caption of each part, repeated ``repeat`` times (the mix),
shuffled.  Dev: greedy captions of the Flickr8k and everyday dev photos with
the runtime's search rules, CIDEr-D and BLEU-4 (Java-free), and the object
hallucination rate (:mod:`capcli.hallucination`).  ``best.pt`` keeps the epoch
with the best sum of the two dev CIDEr-D; ``last.pt`` is written after every
epoch and ``resume=True`` continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from capcli import decode
from capcli.atomic import atomic_write_text
from capcli.datasets import Split, load_split, load_text_captions
from capcli.decode import NO_REPEAT_NGRAM, dangling_ids
from capcli.errors import FatalError
from capcli.hallucination import hallucination, objects_in
from capcli.metrics import quick_scores
from capcli.phrasing import PhraseRule
from capcli.text import Vocab, detokenize, tokenize
from capcli.train import checkpoint, scst
from capcli.train.backbones import preprocess_for
from capcli.train.concepts import ConceptModel, top_concepts
from capcli.train.features import cached_features, module_fingerprint
from capcli.train.loop import one_cycle
from capcli.train.model import CaptionModel, region_grid
from capcli.train.phrasing import seen_trigrams, training_text, unseen_trigrams
from capcli.train.record import hardware
from capcli.train.reward import CiderD
from capcli.train.tagger import build_tagger, labels_for

# The data set each part's captions come from: the everyday photos and the caption-only sentences are COCO's.
DATA_SET = {"flickr8k": "flickr8k", "everyday": "coco", "text": "coco"}


@dataclass
class GroundedOptions:
    init: str  # checkpoint whose encoder (backbone, tuned stages, projection) is kept
    flickr: str  # Flickr8k folder
    everyday: str  # coco-everyday folder (paired photos and text-captions.csv)
    out: str
    concepts: int = 5
    concept_dim: int = 256
    min_count: int = 8
    max_len: int = 20
    repeat: dict[str, int] = field(default_factory=lambda: {"flickr8k": 1, "everyday": 6, "text": 1})
    visual_dropout: float = 0.2
    concept_dropout: float = 0.1
    epochs: int = 8
    batch_size: int = 128
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup: float = 0.05
    clip: float = 5.0
    label_smoothing: float = 0.1
    attention_penalty: float = 1.0
    dropout: float = 0.3
    objective: str = "xent"  # "xent" (teacher forcing) | "cider" (self-critical, from --start)
    start: str | None = None  # a grounded checkpoint whose decoder and vocabulary training continues from
    samples: int = 5  # captions sampled per photo by the cider objective
    hallucination_penalty: float = 0.0  # cider objective: reward taken off per object no reference mentions
    one_reference_objects: list[str] = field(default_factory=list)  # ... penalised on one-reference photos too
    one_reference_penalty: float | None = None  # ... their weight there; None: hallucination_penalty
    repeat_penalty: float = 0.0  # cider objective: reward taken off per word said again (decode.repeated_words)
    unseen_trigram_penalty: float = 0.0  # cider objective: ... per trigram no training sentence has (phrasing)
    sample_said_once: bool = False  # cider objective: samples say no word twice, as capcli's default decoding
    sample_phrasing: float = 0.0  # cider objective: sampled words making an unseen trigram cost this (phrasing)
    xent_weight: float = 0.0  # cider objective: weight of a reference's cross-entropy beside the policy gradient
    reward_df: str = "pooled"  # cider objective: CIDEr-D document frequencies "pooled" over all photos | "per-set"
    distill: bool = False  # cider objective: the Flickr8k photos' cross-entropy targets the init model's captions
    seed: int = 0
    threads: int | None = None
    cache_dir: str = "runs/cache"
    limit: int | None = None  # debug: the first N photos / sentences of each part


@dataclass
class Part:
    """Captions of one source: ids, and the photo (feature row) or pseudo-concept of each."""

    name: str
    captions: list[list[int]]  # token ids with <start> and <end>
    image: np.ndarray  # (C,) feature row of each caption's photo; -1: no photo
    classes: np.ndarray  # (C, k) concept classes
    weights: np.ndarray  # (C, k) concept weights
    unit: np.ndarray  # (C,) the photo (or caption-only photo id) each caption describes, numbered within the part


@dataclass
class Unit:
    """One photo (or caption-only photo) with all its references: what self-critical training samples for."""

    part: str
    image: int  # feature row; -1: caption-only
    classes: np.ndarray  # (k,)
    weights: np.ndarray  # (k,)
    references: list[list[str]]
    target: list[str] | None = None  # the cross-entropy term's caption (distillation); None: a random reference


@dataclass
class DevSet:
    name: str
    split: Split
    features: torch.Tensor  # (N, L, D) float16
    classes: np.ndarray  # (N, k)
    weights: np.ndarray  # (N, k)


def encoder_model(
    init: str, concepts: int, concept_dim: int, vocab: Vocab, max_len: int, dropout: float
) -> CaptionModel:
    """A grounded model: ``init``'s backbone and projection, a pristine tagger, a new decoder for ``vocab``."""
    source = checkpoint.load_checkpoint(init).model
    base = source.config
    cfg = dataclasses.replace(
        base,
        vocab_size=len(vocab),
        concepts=concepts,
        concept_dim=concept_dim,
        classes=len(labels_for(base.backbone)),
        tagger_stages=base.finetune_blocks,
        max_len=max_len,
        dropout=dropout,
    )
    model = CaptionModel(dataclasses.replace(cfg, pretrained=False))
    model.config = cfg
    model.backbone.load_state_dict(source.backbone.state_dict())
    model.project.load_state_dict(source.project.state_dict())
    # Always the ImageNet weights: a checkpoint rebuilt from a bundle says pretrained=False, but the
    # tagger is worth only what the backbone's own classifier knows.
    model.tagger = build_tagger(base.backbone, base.finetune_blocks, pretrained=True).eval()
    model.tagger.requires_grad_(False)
    model.backbone.requires_grad_(False)
    model.project.requires_grad_(False)
    return model


@torch.inference_mode()
def encode_split(
    model: CaptionModel, split: Split, cache_dir: Path, console: Console
) -> tuple[torch.Tensor, np.ndarray]:
    """Projected region features (N, L, D) float16 and tagger probabilities (N, K) of a split's photos."""
    shared, top = model.backbone.split(model.config.tagger_stages)
    identity = {"backbone": model.config.backbone, "frozen_stages": len(shared), "weights": module_fingerprint(shared)}
    cache = cached_features(
        shared,
        identity,
        preprocess_for(model.config.backbone),
        [s.image for s in split.samples],
        cache_dir=cache_dir,
        device=torch.device("cpu"),
        workers=1,
        console=console,
        label=f"{split.dataset} {split.split}",
    )
    if cache.failed:
        raise FatalError(f"{split.dataset} {split.split}: {len(cache.failed)} photos could not be read")
    model.eval()
    feats, probs = [], []
    for start in range(0, len(split.samples), 64):
        x = torch.from_numpy(np.asarray(cache.array[start : start + 64])).float()  # (b, C', h', w')
        feats.append(model.features(region_grid(top(x))).half())  # (b, L, D)
        probs.append(model.tagger(x).numpy())  # (b, K)
    return torch.cat(feats), np.concatenate(probs)


def _ids(vocab: Vocab, caption: str, max_len: int) -> list[int]:
    return [vocab.start_id, *vocab.encode(tokenize(caption)[:max_len]), vocab.end_id]


def train_grounded(options: GroundedOptions, resume: bool = False, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True, soft_wrap=True)
    started = time.time()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if resume:
        state = checkpoint.load(out / "last.pt")
        options = GroundedOptions(**{**state["options"], "threads": options.threads})
        if state["finished"]:
            raise FatalError(f"the run in {out} has already finished: nothing to resume")
    elif (out / "last.pt").exists():
        raise FatalError(f"{out} already holds a run: continue it with --resume, or choose another --out")
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)  # the new decoder's initial weights
    flickr, everyday = Path(options.flickr), Path(options.everyday)
    splits = {
        "flickr8k": load_split("flickr8k", flickr, "train"),
        "everyday": load_split("coco-everyday", everyday, "train"),
        "flickr8k dev": load_split("flickr8k", flickr, "dev"),
        "everyday dev": load_split("coco-everyday", everyday, "dev"),
    }
    text = load_text_captions(everyday / "text-captions.csv")
    if options.limit:
        splits = {k: v.limited(options.limit) for k, v in splits.items()}
        text = dict(list(text.items())[: options.limit])
    for split in splits.values():
        console.print(split.describe())
    console.print(f"caption-only text: {sum(map(len, text.values())):,} sentences of {len(text):,} photos")

    train_text = training_text([splits["flickr8k"], splits["everyday"]], text)
    if options.objective == "cider" and not options.start:
        raise FatalError("self-critical training (objective cider) continues a grounded run: pass its best.pt as start")
    start = state or (checkpoint.load(options.start) if options.start else None)
    vocab = Vocab(tuple(start["vocab"])) if start else Vocab.build(train_text, options.min_count)
    model = encoder_model(options.init, options.concepts, options.concept_dim, vocab, options.max_len, options.dropout)
    if start:
        # a two-view start (benchmarks/fit_view_gate.py) continues as one view: its gate is fitted afterwards
        model.load_state_dict({k: v for k, v in start["model"].items() if not k.startswith("decoder.view_gate.")})
    labels = labels_for(model.config.backbone)
    console.print(
        f"vocabulary: {len(vocab):,} words (seen >= {options.min_count} times); "
        f"concepts: top {options.concepts} of {len(labels)} tagger classes"
    )

    t0 = time.time()
    encoded = {name: encode_split(model, split, Path(options.cache_dir), console) for name, split in splits.items()}
    feature_seconds = time.time() - t0
    concept_model = ConceptModel.fit(
        np.concatenate([encoded["flickr8k"][1], encoded["everyday"][1]]),
        [[tokenize(c) for c in s.captions] for name in ("flickr8k", "everyday") for s in splits[name].samples],
        labels,
        options.concepts,
    )

    # One feature table for the training photos; the parts point into it.
    features = torch.cat([encoded["flickr8k"][0], encoded["everyday"][0]])  # (N, L, D) float16
    parts: list[Part] = []
    offset = 0
    for name in ("flickr8k", "everyday"):
        classes, weights = top_concepts(encoded[name][1], options.concepts)
        caps, image = [], []
        for i, sample in enumerate(splits[name].samples):
            for c in sample.captions:
                caps.append(_ids(vocab, c, options.max_len))
                image.append(offset + i)
        image_arr = np.asarray(image)
        parts.append(
            Part(name, caps, image_arr, classes[image_arr - offset], weights[image_arr - offset], image_arr - offset)
        )
        offset += len(splits[name].samples)
    caps, classes_t, weights_t, unit = [], [], [], []
    concept_rng = np.random.default_rng(options.seed + 1)
    for g, sentences in enumerate(text.values()):  # one concept per photo, from all its sentences' words
        classes, weights = concept_model.concept([w for s in sentences for w in tokenize(s)], concept_rng)
        for s in sentences:
            caps.append(_ids(vocab, s, options.max_len))
            classes_t.append(classes)
            weights_t.append(weights)
            unit.append(g)
    parts.append(Part("text", caps, np.full(len(caps), -1), np.stack(classes_t), np.stack(weights_t), np.asarray(unit)))

    dev = [
        DevSet(name, splits[name], encoded[name][0], *top_concepts(encoded[name][1], options.concepts))
        for name in ("flickr8k dev", "everyday dev")
    ]
    mix = ", ".join(f"{p.name} {len(p.captions):,} x{options.repeat.get(p.name, 1)}" for p in parts)
    console.print(f"mix per epoch: {mix}")

    self_critical = options.objective == "cider"
    if self_critical:
        units = _units(parts, vocab)
        if options.distill:
            t_teacher = time.time()
            teacher = teacher_captions(options.init, encoded["flickr8k"][0], options.max_len)
            for u in units:
                if u.part == "flickr8k":
                    u.target = teacher[u.image]  # the Flickr8k photos come first in the feature table
            console.print(
                f"distillation: the --init model's beam-3 captions of {len(teacher):,} Flickr8k photos "
                f"({time.time() - t_teacher:.0f} s), e.g. {' '.join(teacher[0])!r}"
            )
        groups = [DATA_SET[u.part] for u in units] if options.reward_df == "per-set" else None
        reward = CiderD([u.references for u in units], mark_end=True, groups=groups)
        penalties = [
            hallucination_penalty(
                units,
                options.hallucination_penalty,
                one_reference_objects=frozenset(options.one_reference_objects),
                one_reference_weight=options.one_reference_penalty,
            )
            if options.hallucination_penalty or (options.one_reference_objects and options.one_reference_penalty)
            else None,
            repeat_penalty(options.repeat_penalty) if options.repeat_penalty else None,
            unseen_trigram_penalty(train_text, options.unseen_trigram_penalty)
            if options.unseen_trigram_penalty
            else None,
        ]
        penalty = scst.summed([p for p in penalties if p is not None])
        phrasing = (
            PhraseRule.from_sentences(train_text, vocab, options.sample_phrasing) if options.sample_phrasing else None
        )
        steps_per_epoch = len(_unit_plan(units, options, np.random.default_rng(0)))
        console.print(f"self-critical: {len(units):,} photos an epoch, {options.samples} samples each")
    else:
        steps_per_epoch = _steps_per_epoch(parts, options)
    trainable = [p for p in model.decoder.parameters()]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
    )
    scheduler = one_cycle(optimizer, options.epochs * steps_per_epoch, options.warmup)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "metrics": {}}
    first = 1
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, first = state["history"], state["best"], state["epoch"] + 1
        console.print(f"resuming after epoch {state['epoch']}")
    spec = decode.SearchSpec.for_vocab(
        vocab, options.max_len, no_repeat_ngram=NO_REPEAT_NGRAM, no_end_after=dangling_ids(vocab)
    )
    seconds_before = state["provenance"]["training_seconds"] if state else 0.0
    for epoch in range(first, options.epochs + 1):
        t_epoch = time.time()
        torch.manual_seed(options.seed * 1_009 + epoch)
        if self_critical:
            train_stats = _scst_epoch(
                model,
                features,
                units,
                (reward, penalty),
                vocab,
                options,
                optimizer,
                scheduler,
                epoch,
                console,
                phrasing,
            )
        else:
            train_stats = _epoch(model, features, parts, options, optimizer, scheduler, epoch, console)
        dev_stats, dev_captions = evaluate(model, dev, vocab, spec)
        record = {"epoch": epoch, **train_stats, **dev_stats, "seconds": round(time.time() - t_epoch, 1)}
        history.append(record)
        score = dev_stats["flickr8k_CIDEr"] + dev_stats["everyday_CIDEr"]
        improved = score > best["metrics"].get("flickr8k_CIDEr", -1) + best["metrics"].get("everyday_CIDEr", -1)
        if improved:
            best = {"epoch": epoch, "metrics": dev_stats}
        provenance = {
            "recipe": "grounded",
            "command": options_command(options),
            "init": options.init,
            **(
                {
                    "started_from": {
                        k: start["provenance"].get(k)
                        # started_from too: the whole chain of stages, not just the last one
                        for k in ("command", "training_seconds", "epochs", "best_epoch", "dev_metrics", "started_from")
                    }
                }
                if options.start and start
                else {}
            ),
            "data": {p.name: len(p.captions) for p in parts},
            "repeat": options.repeat,
            "training_seconds": seconds_before + time.time() - started,
            "feature_seconds": feature_seconds,
            "hardware": hardware(torch.device("cpu")),
            "epochs": epoch,
            "best_epoch": best["epoch"],
            "dev_metrics": best["metrics"],
            "dev_protocol": "greedy, runtime search rules; CIDEr-D/BLEU-4 on capcli.text tokens (no PTB tokenizer); "
            "flickr8k dev 1,000 photos, everyday dev 194 photos",
        }
        payload = {
            "config": model.config.to_dict(),
            "vocab": list(vocab.tokens),
            "model": model.state_dict(),
            "tag_labels": list(labels),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "finished": epoch == options.epochs,
            "options": dataclasses.asdict(options),
            "history": history,
            "best": best,
            "provenance": provenance,
        }
        if improved:
            checkpoint.save(out / "best.pt", payload)
            atomic_write_text(out / "best_dev_captions.json", json.dumps(dev_captions, indent=1))
        checkpoint.save(out / "last.pt", payload)
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        console.print(_line(record, options.epochs, improved), markup=False, highlight=False)
        started, seconds_before = time.time(), provenance["training_seconds"]
    return {"best": best, "history": history}


def options_command(options: GroundedOptions) -> str:
    """The ``capcli train-grounded`` command line of ``options`` (defaults and machine settings left out)."""
    defaults = GroundedOptions(init="", flickr="", everyday="", out="")
    args = ["capcli", "train-grounded"]
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name in ("threads",) or (
            value == getattr(defaults, f.name) and f.name not in ("init", "flickr", "everyday", "out")
        ):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):  # a flag: only ever True here, since False is its default
            args.append(flag)
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ",".join(value)
        args += [flag, str(value)]
    return shlex.join(args)


def _epoch(
    model: CaptionModel,
    features: torch.Tensor,
    parts: list[Part],
    options: GroundedOptions,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    console: Console,
) -> dict[str, float]:
    """One pass over the mix; the order depends on (seed, epoch) only, so a resumed run repeats it."""
    rng = np.random.default_rng(options.seed * 100_003 + epoch)
    plan = _plan(parts, options, rng)
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    totals, t0 = np.zeros(2), time.time()
    for n, batch in enumerate(plan, 1):
        xent, attention = _batch_loss(model, features, batch, options, rng)
        _update(xent + options.attention_penalty * attention, optimizer, scheduler, params, options.clip)
        totals += [float(xent.detach()), float(attention.detach())]
        if n % 100 == 0:
            console.print(
                f"  epoch {epoch} step {n}/{len(plan)} loss {totals[0] / n:.3f} ({time.time() - t0:.0f} s)",
                highlight=False,
            )
    return {
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": float(totals[0]) / len(plan),
        "train_attention": float(totals[1]) / len(plan),
    }


def _update(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: list[torch.nn.Parameter],
    clip: float,
) -> None:
    """One optimiser step on ``loss``: gradients, norm clipping, the step and the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    scheduler.step()


def _plan(parts: list[Part], options: GroundedOptions, rng: np.random.Generator) -> list[list[tuple[Part, int]]]:
    """An epoch's batches: each of photo captions or of caption-only sentences (those skip the attention),
    of similar lengths (less padding), in random order."""
    size = options.batch_size
    plan = []
    for photos in (True, False):
        rows = [
            (p, i)
            for p in parts
            if bool((p.image >= 0).all()) == photos
            for i in range(len(p.captions))
            for _ in range(options.repeat.get(p.name, 1))
        ]
        order = rng.permutation(len(rows))
        for start in range(0, len(order), 50 * size):  # sort by length within blocks of 50 batches
            block = sorted(
                order[start : start + 50 * size].tolist(), key=lambda j: len(rows[j][0].captions[rows[j][1]])
            )
            plan += [[rows[j] for j in block[b : b + size]] for b in range(0, len(block), size)]
    return [plan[j] for j in rng.permutation(len(plan))]


def _steps_per_epoch(parts: list[Part], options: GroundedOptions) -> int:
    return len(_plan(parts, options, np.random.default_rng(0)))


def _batch_loss(
    model: CaptionModel,
    features: torch.Tensor,
    batch: list[tuple[Part, int]],
    options: GroundedOptions,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token cross-entropy and mean attention penalty of a batch of (part, caption) rows."""
    image = np.array([p.image[i] for p, i in batch])  # (B,) -1: caption-only
    photos = bool(image[0] >= 0)  # a batch is all photo captions or all caption-only sentences
    captions = _padded([p.captions[i] for p, i in batch])  # (B, T)
    classes = torch.from_numpy(np.stack([p.classes[i] for p, i in batch]))  # (B, k)
    weights = torch.from_numpy(np.stack([p.weights[i] for p, i in batch]))  # (B, k)
    concept = model.decoder.concept(classes, weights)  # (B, C)
    feats = None
    if photos:  # now and then a photo caption loses its regions or its concept
        visual = torch.from_numpy(rng.random(len(batch)) >= options.visual_dropout).float()  # (B,)
        conceptual = torch.from_numpy(rng.random(len(batch)) >= options.concept_dropout).float()  # (B,)
        feats = features[torch.from_numpy(image)].float() * visual[:, None, None]  # (B, L, D)
        concept = concept * conceptual[:, None]
    logits, alphas = model.teacher_forced(feats, captions, concept)  # (B, T-1, V), (B, T-1, L) or None
    targets = captions[:, 1:]  # (B, T-1)
    xent = _token_xent(logits, targets, options)
    if alphas is None:
        return xent, torch.zeros(())
    mask = (targets != 0).unsqueeze(2).float()  # (B, T-1, 1)
    coverage = (alphas * mask).sum(dim=1)  # (B, L)
    penalty = (((1.0 - coverage) ** 2).mean(dim=1) * visual).sum() / visual.sum().clamp(min=1)
    return xent, penalty


def _reference_xent(
    model: CaptionModel,
    feats: torch.Tensor | None,
    concept: torch.Tensor,
    units: list[Unit],
    vocab: Vocab,
    options: GroundedOptions,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Mean token cross-entropy of one reference per photo (drawn by ``rng``), teacher-forced.

    Beside the policy gradient it keeps the words the sampler has stopped drawing: self-critical training
    alone never raises a word whose probability has collapsed, since it is no longer sampled (the mixed
    objective of Paulus et al. 2017). A unit with a ``target`` (distillation) is taught that caption instead."""
    refs = [
        _ids(vocab, " ".join(u.target or u.references[rng.integers(len(u.references))]), options.max_len) for u in units
    ]
    captions = _padded(refs)  # (B, T)
    logits, _ = model.teacher_forced(feats, captions, concept)  # (B, T-1, V)
    return _token_xent(logits, captions[:, 1:], options)


def _padded(captions: list[list[int]]) -> torch.Tensor:
    """Token id lists -> (B, T) with <pad> (id 0) after each, T the longest."""
    out = torch.zeros(len(captions), max(map(len, captions)), dtype=torch.long)  # (B, T)
    for r, ids in enumerate(captions):
        out[r, : len(ids)] = torch.tensor(ids)
    return out


def _token_xent(logits: torch.Tensor, targets: torch.Tensor, options: GroundedOptions) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), <pad> ignored, label-smoothed."""
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=0, label_smoothing=options.label_smoothing)


def _units(parts: list[Part], vocab: Vocab, min_text_references: int = 5) -> list[Unit]:
    """Photos with their references: every photo of the paired parts (x its repeat), and the caption-only
    photos with at least ``min_text_references`` sentences (fewer make a noisy CIDEr-D reward)."""
    units = []
    for part in parts:
        first: dict[int, int] = {}
        refs: dict[int, list[list[str]]] = {}
        for row, u in enumerate(part.unit.tolist()):
            first.setdefault(u, row)
            refs.setdefault(u, []).append(vocab.decode(part.captions[row][1:]))
        for u, row in first.items():
            if part.name != "text" or len(refs[u]) >= min_text_references:
                units.append(Unit(part.name, int(part.image[row]), part.classes[row], part.weights[row], refs[u]))
    return units


def _unit_plan(units: list[Unit], options: GroundedOptions, rng: np.random.Generator) -> list[list[int]]:
    """Batches of unit indices, each all photos or all caption-only; paired parts repeated per the mix."""
    plan = []
    for photos in (True, False):
        rows = [
            i
            for i, u in enumerate(units)
            if (u.image >= 0) == photos
            for _ in range(options.repeat.get(u.part, 1) if photos else 1)
        ]
        order = [rows[j] for j in rng.permutation(len(rows))]
        plan += [order[b : b + options.batch_size] for b in range(0, len(order), options.batch_size)]
    return [plan[j] for j in rng.permutation(len(plan))]


def hallucination_penalty(
    units: list[Unit],
    weight: float,
    min_references: int = 5,
    one_reference_objects: frozenset[str] = frozenset(),
    one_reference_weight: float | None = None,
) -> scst.Penalty:
    """``weight`` per object (capcli.hallucination's list) a sampled caption names and no reference of its photo
    does.  Photos with fewer than ``min_references`` references (the everyday train photos have one) are
    penalised only for ``one_reference_objects``, ``one_reference_weight`` each (default ``weight``): one caption
    leaves most of what is in a photo unsaid, but seldom a person (a COCO reference is silent on a person another
    reference of its photo names 15% of the time, on a dining table 45%)."""
    known = [frozenset(o for r in u.references for o in objects_in(" ".join(r))) for u in units]
    checked = [None if len(u.references) >= min_references else one_reference_objects for u in units]  # None: all
    few = weight if one_reference_weight is None else one_reference_weight

    def penalty(rows: np.ndarray, words: list[list[str]]) -> np.ndarray:
        out = np.zeros(len(rows))
        for i, (r, w) in enumerate(zip(rows, words)):
            only = checked[r]
            if only is None or only:  # a photo with nothing to check costs no caption parsing
                named = set(objects_in(" ".join(w))) - known[r]
                out[i] = weight * len(named) if only is None else few * len(named & only)
        return out

    return penalty


def repeat_penalty(weight: float) -> scst.Penalty:
    """``weight`` per word a sampled caption says again that a caption should say once
    (:func:`capcli.decode.repeated_words`: "A plate of food on a plate." pays once)."""

    def penalty(rows: np.ndarray, words: list[list[str]]) -> np.ndarray:
        return np.array([weight * len(decode.repeated_words(w)) for w in words])

    return penalty


def unseen_trigram_penalty(sentences: list[list[str]], weight: float) -> scst.Penalty:
    """``weight`` per trigram of a sampled caption, its start and end included, that no training sentence has
    (:mod:`capcli.train.phrasing`: "A living room is sitting on a bed." pays for "room is sitting")."""
    seen = seen_trigrams(sentences)

    def penalty(rows: np.ndarray, words: list[list[str]]) -> np.ndarray:
        return np.array([weight * len(unseen_trigrams(w, seen)) for w in words])

    return penalty


def _scst_epoch(
    model: CaptionModel,
    features: torch.Tensor,
    units: list[Unit],
    rewards: tuple[CiderD, scst.Penalty | None],
    vocab: Vocab,
    options: GroundedOptions,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    console: Console,
    phrasing: PhraseRule | None = None,
) -> dict[str, float]:
    """One self-critical pass: ``samples`` captions per photo, each pushed by how much its CIDEr-D (less the
    penalty, if any) beats the others'; ``phrasing``: drawn with unseen trigrams made unlikely."""
    reward, penalty = rewards
    rng = np.random.default_rng(options.seed * 100_003 + epoch)
    plan = _unit_plan(units, options, rng)
    spec = decode.SearchSpec.for_vocab(
        vocab, options.max_len, say_once=decode.say_once_ids(vocab) if options.sample_said_once else ()
    )
    allowed = scst.allowed_tokens(spec, len(vocab))
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total_reward, t0 = 0.0, time.time()
    for n, batch in enumerate(plan, 1):
        chosen = [units[i] for i in batch]
        image = np.array([u.image for u in chosen])
        feats = features[torch.from_numpy(image)].float() if image[0] >= 0 else None  # (B, L, D) or None
        concept = model.decoder.concept(
            torch.from_numpy(np.stack([u.classes for u in chosen])),
            torch.from_numpy(np.stack([u.weights for u in chosen])),
        )  # (B, C)

        def sampler(_: None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            return scst.sample(model.decoder, spec, allowed, feats, k, concept, phrasing)

        loss, rewards = scst.self_critical_loss(sampler, None, batch, options.samples, reward, vocab, penalty)
        loss = loss / (len(batch) * options.samples)
        if options.xent_weight:
            loss = loss + options.xent_weight * _reference_xent(model, feats, concept, chosen, vocab, options, rng)
        _update(loss, optimizer, scheduler, params, options.clip)
        total_reward += rewards / (len(batch) * options.samples)
        if n % 50 == 0:
            console.print(
                f"  epoch {epoch} step {n}/{len(plan)} reward {total_reward / n:.3f} ({time.time() - t0:.0f} s)",
                highlight=False,
            )
    return {
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": -total_reward / len(plan),
        "train_reward": total_reward / len(plan),
    }


@torch.no_grad()
def beam_captions(
    decoder: torch.nn.Module,
    features: torch.Tensor,
    concept: torch.Tensor | None,
    vocab: Vocab,
    spec: decode.SearchSpec,
    beam: int = 1,
    batch: int = 100,
) -> list[list[str]]:
    """Captions (words) of photos given by their region features (N, L, D) [and concepts (N, C)], with the
    runtime's search over a PyTorch decoder step; ``beam`` 1 is greedy."""
    decoder.eval()
    names = decode.state_names(decoder.kind, bool(decoder.concept_view))
    out: list[list[str]] = []
    for start in range(0, len(features), batch):
        feats = features[start : start + batch].float()  # (b, L, D)
        con = None if concept is None else concept[start : start + batch]  # (b, C)
        keys, state = decoder.init(feats, con)

        def step(
            tokens: np.ndarray, st: decode.State, images: np.ndarray
        ) -> tuple[np.ndarray, decode.State, np.ndarray]:
            which = torch.from_numpy(images)
            logits, new, alpha = decoder.step(
                torch.from_numpy(tokens),
                tuple(torch.from_numpy(st[n]) for n in names),
                feats[which],
                keys[which],
                None if con is None else con[which],
            )
            return torch.log_softmax(logits, dim=1).numpy(), dict(zip(names, (s.numpy() for s in new))), alpha.numpy()

        initial = dict(zip(names, (s.numpy() for s in state)))
        hyps = decode.beam_search(step, initial, spec, beam=beam) if beam > 1 else decode.greedy(step, initial, spec)
        out += [vocab.decode(h.ids) for h in hyps]
    return out


@torch.no_grad()
def caption_dev(model: CaptionModel, dev: DevSet, vocab: Vocab, spec: decode.SearchSpec) -> dict[str, str]:
    """{photo path: greedy caption} of a dev set."""
    concept = model.decoder.concept(torch.from_numpy(dev.classes), torch.from_numpy(dev.weights))  # (N, C)
    words = beam_captions(model.decoder, dev.features, concept, vocab, spec)
    return {str(s.image): detokenize(w) for s, w in zip(dev.split.samples, words)}


def teacher_captions(init: str, features: torch.Tensor, max_len: int, beam: int = 3) -> list[list[str]]:
    """The ``init`` captioner's own beam-search captions (words) of photos given by its region features (N, L, D):
    the targets of sequence-level knowledge distillation (Kim & Rush 2016), with the runtime's rules: they say
    no word twice, so the student is not taught "A man is riding a bike on a bike."."""
    teacher = checkpoint.load_checkpoint(init)
    if teacher.model.config.grounded:
        raise FatalError(f"{init}: --distill needs a captioner without a concept input as --init")
    spec = decode.SearchSpec.runtime(teacher.vocab, max_len)
    return beam_captions(teacher.model.decoder, features, None, teacher.vocab, spec, beam=beam)


def evaluate(
    model: CaptionModel, dev: list[DevSet], vocab: Vocab, spec: decode.SearchSpec
) -> tuple[dict[str, float], dict[str, dict[str, str]]]:
    stats: dict[str, float] = {}
    captions: dict[str, dict[str, str]] = {}
    for d in dev:
        hyps = caption_dev(model, d, vocab, spec)
        refs = {str(s.image): list(s.captions) for s in d.split.samples}
        key = d.name.split()[0]
        scores = {**quick_scores(refs, hyps), **hallucination(refs, hyps)}
        stats.update({f"{key}_{k}": float(v) for k, v in scores.items()})  # plain floats: weights_only loading
        captions[d.name] = hyps
    return stats, captions


def _line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.3f}  "
        f"flickr8k CIDEr {record['flickr8k_CIDEr']:.3f} BLEU-4 {record['flickr8k_BLEU-4']:.3f}  "
        f"everyday CIDEr {record['everyday_CIDEr']:.3f} BLEU-4 {record['everyday_BLEU-4']:.3f} "
        f"hallucinated {record['everyday_object_hallucination']:.3f}  {record['seconds']:.0f} s"
        + ("  [best]" if improved else "")
    )
