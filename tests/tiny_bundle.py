"""Build tiny random captioning models, checkpoints and bundles for tests (needs torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capcli.text import Vocab, tokenize

# The tiny models' vocabulary: the first Flickr8k captions.
CAPTIONS = [
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "A girl going into a wooden building .",
    "A little girl climbing into a wooden playhouse .",
    "A little girl climbing the stairs to her playhouse .",
    "A little girl in a pink dress going into a wooden cabin .",
    "A black dog and a spotted dog are fighting",
    "A black dog and a tri-colored dog playing with each other on the road .",
    "A black dog and a white dog with brown spots are staring at each other in the street .",
    "Two dogs of different breeds looking at each other on the road .",
    "Two dogs on pavement moving toward each other .",
]


# TrainOptions of a tiny model that trains in seconds (tests/test_train.py, tests/test_scst.py).
TINY_TRAINING = dict(
    backbone="tiny",
    pretrained=False,
    feature_dim=32,
    attention_dim=32,
    embed_dim=32,
    hidden_dim=64,
    min_count=1,
    workers=0,
    batch_size=4,
    lr=1e-2,
    warmup=0.05,
    patience=0,
)


def tiny_vocab() -> Vocab:
    """A small vocabulary from the first real Flickr8k captions (words seen twice or more)."""
    return Vocab.build((tokenize(c) for c in CAPTIONS), min_count=2)


def make_tiny_model(vocab: Vocab, decoder: str = "gru", backbone: str = "tiny", seed: int = 0, **config: Any):
    """A random-weight CaptionModel (``pretrained=False`` unless given) small enough to export fast."""
    import torch

    from capcli.train.model import CaptionModel, ModelConfig

    torch.manual_seed(seed)
    defaults = dict(pretrained=False, feature_dim=32, attention_dim=16, embed_dim=16, hidden_dim=24, max_len=8)
    cfg = ModelConfig(vocab_size=len(vocab), backbone=backbone, decoder=decoder, **{**defaults, **config})
    return CaptionModel(cfg).eval()


def make_tiny_checkpoint(path: Path, decoder: str = "gru", backbone: str = "tiny", **extra: Any) -> Path:
    """A checkpoint file as the training loop writes it: config, vocab, model (+ extra keys)."""
    import torch

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, decoder, backbone)
    data = {"config": model.config.to_dict(), "vocab": list(vocab.tokens), "model": model.state_dict(), **extra}
    torch.save(data, path)
    return path


# ModelConfig of a tiny grounded two-view decoder (a tagger of 10 classes, its top 3 as the concept).
TWO_VIEW = dict(concepts=3, classes=10, concept_dim=8, tagger_stages=1, concept_view=0.4)


def make_tiny_bundle(out_dir: Path, decoder: str = "gru", backbone: str = "tiny", **config: Any) -> Path:
    """Export a tiny random model (vocabulary from real captions) as a bundle at ``out_dir``."""
    from capcli.export import export_bundle

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, decoder, backbone, **config)
    provenance = {"dataset": "none (random weights, test fixture)", "licence": "test only"}
    return export_bundle(model, vocab, out_dir, provenance=provenance)
