"""``capcli eval``: caption a data set split with a bundle (or read captions) and score them.

Hypotheses come either from running a bundle over the split's images
(:func:`caption_split`, the same read/batch/decode pipeline as ``capcli
caption``) or from an existing captions file (:func:`read_hypotheses`:
capcli's JSONL/CSV output, or any ``image,caption`` CSV/JSONL).  They are
scored with the standard protocol (:func:`capcli.metrics.coco_scores`), and
the report states that protocol beside the numbers.

No torch here.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from capcli.datasets import Split
from capcli.decode import Decoding
from capcli.errors import FatalError
from capcli.hallucination import hallucination
from capcli.metrics import METRICS, PROTOCOL, coco_scores
from capcli.writers import COLUMNS, read_records


@dataclass
class Hypotheses:
    captions: dict[str, str]  # str(image path) -> caption, for images of the split
    failed: Counter[str] = field(default_factory=Counter)  # error kind -> images that got no caption
    unmatched: int = 0  # captions-file rows naming no image of the split


@dataclass
class Report:
    metrics: dict[str, float]
    protocol: dict[str, Any]

    def lines(self) -> list[str]:
        p = self.protocol
        scored = f"{p['images']:,}" + (f" of {p['split_images']:,}" if p["split_images"] != p["images"] else "")
        head = f"{p['dataset']} {p['split']}: {scored} images, {p['references']:,} references"
        if "beam" in p:
            how = (
                f"model {p['model']}, beam {p['beam']}, length penalty {p['length_penalty']}, max {p['max_len']} words"
            )
            if p.get("decoder") == "int8":
                how += ", int8 decoder"
            if p.get("no_repeat_ngram"):
                how += f", no repeated {p['no_repeat_ngram']}-grams"
            if p.get("no_end_after"):
                how += f", no caption ending on {'/'.join(p['no_end_after'][:3])}/..."
            if p.get("no_repeated_words"):
                how += ", no noun, colour or verb said twice"
            if p.get("decoding"):
                how += "".join(f", {name} {value}" for name, value in p["decoding"].items())
        else:
            how = f"captions from {p['captions']}"
        out = [head, f"{how}; {PROTOCOL}"]
        out += [f"{name:<8} {self.metrics[name]:.3f}" for name in METRICS if name in self.metrics]
        if "object_hallucination" in self.metrics:
            m = self.metrics
            out += [
                f"objects: {m['object_hallucination']:.3f} of {int(m['object_mentions']):,} object words name something "
                "no reference of their photo mentions (CHAIR-i);",
                f"         {m['caption_hallucination']:.3f} of the captions have at least one (CHAIR-s)",
            ]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "protocol": self.protocol}


def score(split: Split, hypotheses: Hypotheses, protocol: dict[str, Any], meteor: bool = True) -> Report:
    """Score the hypotheses against every reference of their images."""
    if not hypotheses.captions:
        raise FatalError(f"no captions to score for the {split.split} split of {split.dataset}")
    references = {str(s.image): list(s.captions) for s in split.samples}
    refs = {k: references[k] for k in hypotheses.captions}
    metrics = coco_scores(refs, hypotheses.captions, meteor=meteor)
    metrics.update(hallucination(refs, hypotheses.captions))
    protocol = {
        "dataset": split.dataset,
        "split": split.split,
        "images": len(hypotheses.captions),
        "split_images": len(split.samples),
        "references": sum(len(r) for r in refs.values()),
        **protocol,
        "scorer": PROTOCOL,
    }
    if hypotheses.failed:
        protocol["images_failed"] = dict(hypotheses.failed)
    return Report(metrics, protocol)


def caption_split(
    split: Split,
    model: str | None,
    *,
    beam: int = 3,
    max_len: int | None = None,
    length_penalty: float = 0.7,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    workers: int = 2,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    **decoding: Any,
) -> tuple[Hypotheses, dict[str, Any]]:
    """Caption every image of ``split`` with a bundle; (hypotheses, protocol facts).

    ``decoding``: more of :func:`capcli.load`'s decoding options (min_len, sample, prefix, ...).
    """
    from capcli.api import load

    loaded = load(
        model,
        device=device,
        beam=beam,
        max_len=max_len,
        length_penalty=length_penalty,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
        **decoding,
    )
    captioner, bundle = loaded.captioner, loaded.bundle
    assert bundle is not None
    result = Hypotheses({})
    for record in loaded.caption(str(s.image) for s in split.samples):
        if record["status"] == "ok":
            result.captions[record["source"]] = record["caption"]
        else:
            result.failed[record["error_kind"]] += 1
        if on_record is not None:
            on_record(record)
    protocol = {
        "model": str(bundle.path),
        "beam": beam,
        "length_penalty": length_penalty,
        "max_len": captioner.spec.max_len,
        "no_repeat_ngram": captioner.spec.no_repeat_ngram,
        "no_end_after": bundle.vocab.decode(captioner.spec.no_end_after),
        "no_repeated_words": bool(captioner.spec.say_once),
        "device": captioner.device,
        "decoder": captioner.precision,
        "encoder": captioner.encoder_precision,
    }
    # The decoding options beyond those above, when set: name those that differ from the defaults.
    asked, standard = asdict(captioner.decoding), asdict(Decoding())
    changed = {name: value for name, value in asked.items() if value != standard[name] and name not in protocol}
    if changed:
        protocol["decoding"] = changed
    return result, protocol


def read_hypotheses(path: Path, split: Split) -> Hypotheses:
    """Captions from a capcli output (JSONL/CSV) or an ``image,caption`` file, matched to the split's images.

    A row's ``source`` (or ``image``) matches an image by its path as the data
    set names it, its absolute path, or its file name when that is unique.
    """
    index: dict[str, str] = {}
    names = Counter(s.image.name for s in split.samples)
    for s in split.samples:
        key = str(s.image)
        index[key] = index[str(s.image.resolve())] = key
        if names[s.image.name] == 1:
            index[s.image.name] = key
    result = Hypotheses({})
    for source, caption, status, kind in _rows(path):
        key = index.get(source) or index.get(str(Path(source).resolve())) or index.get(Path(source).name)
        if key is None:
            result.unmatched += 1
        elif status == "ok" and isinstance(caption, str):
            result.captions[key] = caption
        else:
            result.failed[kind or "error"] += 1
    return result


def _rows(path: Path) -> Iterator[tuple[str, Any, str, str | None]]:
    """(source, caption, status, error kind) of every row."""
    try:
        if path.suffix.lower() == ".csv":
            yield from _csv_rows(path)
        else:
            yield from _jsonl_rows(path)
    except OSError as exc:
        raise FatalError(f"cannot read {path}: {exc.strerror or exc}") from None


def _csv_rows(path: Path) -> Iterator[tuple[str, Any, str, str | None]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        header = next(csv.reader(f), [])
    if tuple(header[: len(COLUMNS)]) == COLUMNS:  # capcli's own CSV (formula guard undone)
        rows: list[dict[str, Any]] = read_records(str(path), "csv", tuple(header))
    else:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            rows = list(csv.DictReader(f))
    for row in rows:
        yield _row(row, path)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any, str, str | None]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise FatalError(f"{path}: line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise FatalError(f"{path}: line {number} is not a JSON object")
            yield _row(row, path)


def _row(row: dict[str, Any], path: Path) -> tuple[str, Any, str, str | None]:
    source = row.get("source") or row.get("image")
    if not isinstance(source, str) or "caption" not in row:
        raise FatalError(f"{path}: every row needs 'source' (or 'image') and 'caption'")
    return source, row.get("caption"), row.get("status") or "ok", row.get("error_kind")
