"""``capcli train``'s options: one dataclass, saved in every checkpoint and read back by ``--resume``."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from capcli.train.model import ModelConfig

# Options that describe the machine, not the run: --resume takes them from the new command line.
LOCAL_OPTIONS = ("out", "device", "workers", "threads", "cache_dir")
# Options that --init takes from the checkpoint it starts from: they describe its model.
ARCHITECTURE = (
    "backbone",
    "pretrained",
    "decoder",
    "feature_dim",
    "attention_dim",
    "embed_dim",
    "hidden_dim",
    "dropout",
    "max_len",
)
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
            vocab_size=vocab_size,
            backbone=self.backbone,
            pretrained=self.pretrained,
            decoder=self.decoder,
            feature_dim=self.feature_dim,
            attention_dim=self.attention_dim,
            embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            max_len=self.max_len,
            finetune_blocks=self.finetune_blocks,
        )
