"""Probe: decode a grounded checkpoint with two views of its decoder mixed, and score both dev sets.

    python benchmarks/probe_ensemble_decoding.py runs/default.pt guide:0.5 expert:0.3

Each run of the decoder sees the photo one way: ``full`` (regions and the tagger's concept, as capcli
captions), ``regions`` (the concept zeroed) or ``concept`` (the regions zeroed, as the caption-only
sentences trained it).  A spec ``KIND:X`` ranks the beam's words by

- ``guide:a``: ``(1+a) log p(w | full) - a log p(w | regions)``, words under 0.1 x the likeliest barred
  (guidance towards the concept, as visual contrastive decoding guides towards the image);
- ``expert:w``: ``(1-w) log p(w | full) + w log p(w | concept)`` (a product of experts).

Beam 3 with the runtime's search rules, the PyTorch float decoder, capcli's own CIDEr-D and CHAIR
(``capcli.metrics.quick_scores``, ``capcli.hallucination``); one JSON line per spec.  Not part of
capcli: what it found is in docs/grounded-training.md (session 17).  DATA (default ../shared/data)
holds flickr8k/ and coco-everyday/; the region features come from (and go to) runs/cache.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from capcli import decode
from capcli.datasets import load_split
from capcli.hallucination import hallucination
from capcli.metrics import quick_scores
from capcli.text import detokenize
from capcli.train import checkpoint
from capcli.train.concepts import top_concepts
from capcli.train.grounded import encode_split

BARRED_BELOW = 0.1  # guide: words under this fraction of the likeliest one's probability are barred


@torch.no_grad()
def captions(model, vocab, features: torch.Tensor, probs: np.ndarray, kind: str, x: float) -> list[str]:
    """Beam-3 captions of photos given by region features (N, L, D) and tagger probabilities (N, K)."""
    dec = model.decoder
    spec = decode.SearchSpec.runtime(vocab, model.config.max_len)
    classes, weights = top_concepts(probs, dec.top_k)
    concepts = dec.concept(torch.from_numpy(classes), torch.from_numpy(weights))  # (N, C)
    out: list[str] = []
    for start in range(0, len(features), 100):
        feats = features[start : start + 100].float()  # (b, L, D)
        con = concepts[start : start + 100]  # (b, C)
        # the second view: regions kept and concept zeroed (guide), or the other way round (expert)
        other_feats, other_con = (feats, con * 0) if kind == "guide" else (feats * 0, con)
        keys, state = dec.init(feats, con)
        other_keys, other_state = dec.init(other_feats, other_con)

        def step(
            tokens: np.ndarray, st: decode.State, images: np.ndarray
        ) -> tuple[np.ndarray, decode.State, np.ndarray]:
            which, words = torch.from_numpy(images), torch.from_numpy(tokens)
            logits, new, alpha = dec.step(words, (torch.from_numpy(st["h"]),), feats[which], keys[which], con[which])
            other_logits, other_new, _ = dec.step(
                words, (torch.from_numpy(st["u"]),), other_feats[which], other_keys[which], other_con[which]
            )
            full, other = torch.log_softmax(logits, 1), torch.log_softmax(other_logits, 1)  # (n, V) each
            if kind == "guide":
                mixed = (1 + x) * full - x * other
                mixed = mixed.masked_fill(full < full.max(1, keepdim=True).values + np.log(BARRED_BELOW), -1e9)
            else:
                mixed = (1 - x) * full + x * other
            return torch.log_softmax(mixed, 1).numpy(), {"h": new[0].numpy(), "u": other_new[0].numpy()}, alpha.numpy()

        initial = {"h": state[0].numpy(), "u": other_state[0].numpy()}
        out += [detokenize(vocab.decode(h.ids)) for h in decode.beam_search(step, initial, spec, beam=3)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a grounded training checkpoint")
    parser.add_argument("specs", nargs="+", help="guide:A or expert:W (expert:0 is plain capcli decoding)")
    args = parser.parse_args()
    loaded = checkpoint.load_checkpoint(args.checkpoint)
    model = loaded.model.eval()
    if model.config.concept_view:
        parser.error(f"{args.checkpoint}: a two-view checkpoint; the probe mixes views of a one-view decoder")
    data = Path(os.environ.get("DATA", "../shared/data"))
    splits = {
        "everyday": load_split("coco-everyday", data / "coco-everyday", "dev"),
        "flickr8k": load_split("flickr8k", data / "flickr8k", "dev"),
    }
    encoded = {k: encode_split(model, s, Path("runs/cache"), Console(stderr=True)) for k, s in splits.items()}
    for spec in args.specs:
        kind, x = spec.split(":")
        if kind not in ("guide", "expert"):
            parser.error(f"{spec}: the kind is guide or expert")
        row: dict = {"spec": spec}
        for name, split in splits.items():
            images = [str(s.image) for s in split.samples]
            hyps = dict(zip(images, captions(model, loaded.vocab, *encoded[name], kind, float(x))))
            refs = {str(s.image): list(s.captions) for s in split.samples}
            row[name] = {
                k: round(float(v), 4) for k, v in {**quick_scores(refs, hyps), **hallucination(refs, hyps)}.items()
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
