"""Captioned image data sets: every supported format read into one structure.

A loader returns a :class:`Split`: the images of one split, each with all of
its reference captions, plus counts of what had to be skipped (images listed
but absent on disk, malformed rows, listed images without a caption).  Bad
input is counted and reported, never a crash; only a missing annotation file
or split definition is fatal.

Formats (``--dataset``):

- ``flickr8k`` / ``flickr30k``: ``captions.txt`` CSV (``image,caption``) or the
  original ``Flickr8k.token.txt`` / ``results_20130124.token``
  (``name.jpg#N<TAB>caption``), with split files ``Flickr_8k.trainImages.txt``
  (``Flickr_30k.…`` or ``trainImages.txt`` also accepted).
- ``coco``: ``captions_{train,val}{2014,2017}.json`` (in DIR or DIR/annotations)
  with the image folder ``train2017/`` etc.  ``dev`` is the val file.
- ``karpathy``: ``dataset_{coco,flickr8k,flickr30k}.json``; train includes
  ``restval`` (the usual "train+restval"), dev is ``val``.
- ``coco-everyday``: ``captions.csv`` (``image,caption,split``) with the photos
  in ``images/``; its caption-only ``text-captions.csv`` is read by
  :func:`load_text_captions`.
- ``csv``: a generic ``image,caption`` CSV or JSONL (``{"image", "caption"}`` or
  ``{"image", "captions": [...]}``), with an optional ``split`` column; without
  one, a stable hash of the image name puts 10 % of the images in dev.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from capcli.errors import FatalError

DATASETS = ("flickr8k", "flickr30k", "coco", "coco-everyday", "karpathy", "csv")
SPLITS = ("train", "dev", "test")
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test"}
# Folder names the photos come in, tried in order when --images is not given.
_IMAGE_DIRS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images", "flickr30k-images")


@dataclass(frozen=True)
class Sample:
    image: Path
    captions: tuple[str, ...]


@dataclass
class Split:
    """One split of a data set: images with their captions, and what was skipped."""

    dataset: str
    split: str
    source: str  # the annotation file read
    samples: list[Sample] = field(default_factory=list)
    missing_images: int = 0  # listed, but no file on disk
    bad_rows: int = 0  # malformed annotation rows
    uncaptioned: int = 0  # in the split, but no caption for them

    @property
    def n_captions(self) -> int:
        return sum(len(s.captions) for s in self.samples)

    def limited(self, limit: int | None) -> Split:
        """The first ``limit`` images (debug runs); counts are kept."""
        if limit is None:
            return self
        return Split(
            self.dataset,
            self.split,
            self.source,
            self.samples[:limit],
            self.missing_images,
            self.bad_rows,
            self.uncaptioned,
        )

    def describe(self) -> str:
        text = f"{self.dataset} {self.split}: {len(self.samples):,} images, {self.n_captions:,} captions"
        skipped = [
            (self.missing_images, "missing images"),
            (self.bad_rows, "bad rows"),
            (self.uncaptioned, "images without captions"),
        ]
        notes = [f"{n:,} {what}" for n, what in skipped if n]
        return text + (f" (skipped {', '.join(notes)})" if notes else "")


def canonical_split(name: str) -> str:
    try:
        return _SPLIT_ALIASES[name.lower()]
    except KeyError:
        raise FatalError(f"unknown split {name!r}; use train, dev (val) or test") from None


def load_split(dataset: str, data: Path, split: str, images: Path | None = None) -> Split:
    """Read one split of ``dataset`` from ``data`` (a folder, or the annotation file).

    ``images`` overrides where the photos are looked up.
    """
    split = canonical_split(split)
    data = Path(data)
    if not data.exists():
        raise FatalError(f"data path not found: {data}")
    if dataset in ("flickr8k", "flickr30k"):
        return _load_flickr(dataset, data, split, images)
    if dataset == "coco":
        return _load_coco(data, split, images)
    if dataset == "karpathy":
        return _load_karpathy(data, split, images)
    if dataset == "csv":
        return _load_generic(data, split, images)
    if dataset == "coco-everyday":
        folder = data if data.is_dir() else data.parent
        everyday = _load_generic(data, split, images if images is not None else folder / "images")
        everyday.dataset = "coco-everyday"
        return everyday
    raise FatalError(f"unknown data set kind {dataset!r}; choose from {', '.join(DATASETS)}")


def load_text_captions(path: Path) -> dict[str, list[str]]:
    """Caption-only sentences (``coco_id,caption`` CSV, as coco-everyday's ``text-captions.csv``), by photo id.

    Malformed rows are skipped; a missing file is fatal.
    """
    if not Path(path).is_file():
        raise FatalError(f"caption-only text not found: {path}")
    collector = _Collector()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            collector.add(row.get("coco_id"), row.get("caption"))
    return collector.captions


# -- shared helpers -----------------------------------------------------------


class _Collector:
    """Groups captions by image in first-seen order, counting bad rows."""

    def __init__(self) -> None:
        self.captions: dict[str, list[str]] = {}
        self.bad_rows = 0

    def add(self, image: object, caption: object) -> None:
        if not isinstance(image, str) or not isinstance(caption, str) or not image.strip() or not caption.strip():
            self.bad_rows += 1
            return
        self.captions.setdefault(image.strip(), []).append(" ".join(caption.split()))


def _finish(split: Split, names: Iterable[str], captions: dict[str, list[str]], resolve) -> Split:
    """Keep ``names`` (in order) that have captions and an image file on disk."""
    for name in names:
        caps = captions.get(name)
        if not caps:
            split.uncaptioned += 1
            continue
        path = resolve(name)
        if path is None:
            split.missing_images += 1
            continue
        split.samples.append(Sample(path, tuple(caps)))
    return split


def _in_folder(folder: Path):
    def resolve(name: str) -> Path | None:
        path = folder / name
        return path if path.is_file() else None

    return resolve


def _image_dir(data: Path, images: Path | None) -> Path:
    if images is not None:
        if not images.is_dir():
            raise FatalError(f"image folder not found: {images}")
        return images
    for name in _IMAGE_DIRS:
        if (data / name).is_dir():
            return data / name
    return data


def _first_existing(candidates: Iterable[Path], what: str) -> Path:
    candidates = list(candidates)
    for path in candidates:
        if path.is_file():
            return path
    raise FatalError(f"{what} not found; looked for: {', '.join(str(p) for p in candidates)}")


def _read_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for line in f:
            yield line.rstrip("\r\n")


# -- Flickr8k / Flickr30k ------------------------------------------------------


def _load_flickr(dataset: str, data: Path, split: str, images: Path | None) -> Split:
    folder = data if data.is_dir() else data.parent
    if data.is_file():
        annotations = data
    else:
        annotations = _first_existing(
            [
                folder / "captions.txt",
                folder / "Flickr8k.token.txt",
                folder / "results_20130124.token",
                folder / "Flickr30k.token.txt",
            ],
            f"{dataset} captions file",
        )
    collector = _Collector()
    if _looks_like_token_file(annotations):
        for line in _read_lines(annotations):
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            name, hash_, _ = key.partition("#")
            collector.add(name if tab and hash_ else None, caption)
    else:
        _read_csv(annotations, collector)
    names = _read_split_file(dataset, folder, split)
    result = Split(dataset, split, str(annotations), bad_rows=collector.bad_rows)
    return _finish(result, names, collector.captions, _in_folder(_image_dir(folder, images)))


def _looks_like_token_file(path: Path) -> bool:
    first = next((line for line in _read_lines(path) if line.strip()), "")
    return "\t" in first and "#" in first.split("\t", 1)[0]


def _read_csv(path: Path, collector: _Collector) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise FatalError(f"{path}: expected a CSV header with 'image' and 'caption' columns")
        rows = list(reader)
    for row in rows:
        collector.add(row.get("image"), row.get("caption"))
    return rows


def _read_split_file(dataset: str, folder: Path, split: str) -> list[str]:
    n = dataset.removeprefix("flickr")  # "8k" | "30k"
    path = _first_existing(
        [
            folder / f"Flickr_{n}.{split}Images.txt",
            folder / f"Flickr{n}.{split}Images.txt",
            folder / f"{split}Images.txt",
        ],
        f"{dataset} {split} split file (for Flickr30k without one, use the Karpathy split: --dataset karpathy)",
    )
    names = [line.strip() for line in _read_lines(path)]
    return [name for name in names if name]


# -- COCO -----------------------------------------------------------------------


def _load_coco(data: Path, split: str, images: Path | None) -> Split:
    if data.is_file():
        annotations, folder = data, data.parent
    else:
        if split == "test":
            raise FatalError("COCO's test images have no public captions: use --dataset karpathy for a test split")
        part = "train" if split == "train" else "val"
        annotations = _first_existing(
            [d / f"captions_{part}{year}.json" for year in ("2017", "2014") for d in (data, data / "annotations")],
            f"COCO {part} captions",
        )
        folder = data
    subset = annotations.stem.removeprefix("captions_")  # "val2014"
    if images is None:
        candidates = (folder / subset, folder / "images" / subset, folder.parent / subset)
        images = next((d for d in candidates if d.is_dir()), folder)
    elif not images.is_dir():
        raise FatalError(f"image folder not found: {images}")
    doc = _read_json(annotations)
    collector = _Collector()
    names: list[str] = []
    by_id: dict[object, str] = {}
    for entry in doc.get("images", []):
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str) and "id" in entry:
            by_id[entry["id"]] = entry["file_name"]
            names.append(entry["file_name"])
        else:
            collector.bad_rows += 1
    for ann in doc.get("annotations", []):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        collector.add(by_id.get(image_id), ann.get("caption") if isinstance(ann, dict) else None)
    result = Split("coco", split, str(annotations), bad_rows=collector.bad_rows)
    return _finish(result, names, collector.captions, _in_folder(images))


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise FatalError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise FatalError(f"{path}: expected a JSON object")
    return doc


# -- Karpathy splits ---------------------------------------------------------------

_KARPATHY_SPLITS = {"train": ("train", "restval"), "dev": ("val",), "test": ("test",)}


def _load_karpathy(data: Path, split: str, images: Path | None) -> Split:
    if data.is_file():
        annotations = data
    else:
        found = sorted(data.glob("dataset_*.json"))
        if len(found) != 1:
            what = "none" if not found else ", ".join(p.name for p in found)
            raise FatalError(f"expected one Karpathy dataset_*.json in {data} (found {what}); pass the file as --data")
        annotations = found[0]
    folder = annotations.parent
    roots = [images] if images is not None else [folder, *(folder / d for d in _IMAGE_DIRS)]
    roots = [r for r in roots if r.is_dir()]
    doc = _read_json(annotations)
    wanted = _KARPATHY_SPLITS[split]
    collector = _Collector()
    names: list[str] = []
    for entry in doc.get("images", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            collector.bad_rows += 1
            continue
        if entry.get("split") not in wanted:
            continue
        name = f"{entry.get('filepath') or ''}/{entry['filename']}".lstrip("/")
        names.append(name)
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            collector.bad_rows += 1
            continue
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(map(str, sentence["tokens"]))
            collector.add(name, raw)

    def resolve(name: str) -> Path | None:
        # "val2014/COCO_val2014_….jpg" under a root, or just the file name.
        for root in roots:
            for candidate in (root / name, root / Path(name).name):
                if candidate.is_file():
                    return candidate
        return None

    stem = annotations.stem.removeprefix("dataset_")
    result = Split(f"karpathy-{stem}", split, str(annotations), bad_rows=collector.bad_rows)
    return _finish(result, names, collector.captions, resolve)


# -- generic CSV / JSONL -----------------------------------------------------------------


def _load_generic(data: Path, split: str, images: Path | None) -> Split:
    if data.is_file():
        path = data
    else:
        path = _first_existing([data / "captions.csv", data / "captions.jsonl"], "captions.csv or captions.jsonl")
    folder = images if images is not None else path.parent
    collector = _Collector()
    splits: dict[str, str] = {}  # image -> its split, when the file says
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for line in _read_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                collector.bad_rows += 1
                continue
            if not isinstance(row, dict):
                collector.bad_rows += 1
                continue
            captions = row.get("captions", [row.get("caption")])
            for caption in captions if isinstance(captions, list) else [None]:
                collector.add(row.get("image"), caption)
            _note_split(splits, row.get("image"), row.get("split"))
    else:
        for row in _read_csv(path, collector):
            _note_split(splits, row.get("image"), row.get("split"))
    names = list(collector.captions)
    if splits:
        names = [n for n in names if splits.get(n) == split]
    elif split == "test":
        raise FatalError(f"{path} has no 'split' column, so it has no test split")
    else:
        names = [n for n in names if _hash_split(n) == split]
    result = Split("csv", split, str(path), bad_rows=collector.bad_rows)
    return _finish(result, names, collector.captions, _in_folder(folder))


def _note_split(splits: dict[str, str], image: object, value: object) -> None:
    if isinstance(image, str) and isinstance(value, str) and value.strip():
        splits[image.strip()] = _SPLIT_ALIASES.get(value.strip().lower(), value.strip().lower())


def _hash_split(name: str) -> str:
    """Stable 90/10 train/dev assignment by image name."""
    return "dev" if zlib.crc32(name.encode("utf-8")) % 10 == 0 else "train"
