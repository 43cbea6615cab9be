"""Every data set loader on a tiny fixture written in its real on-disk format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from capcli.datasets import load_split
from capcli.errors import FatalError


def _jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


@pytest.fixture
def flickr(tmp_path: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _jpeg(tmp_path / "Images" / name)  # d.jpg is listed but missing
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\nd.jpg\ne.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("c.jpg\n")
    return tmp_path


def test_flickr_captions_csv(flickr: Path) -> None:
    (flickr / "captions.txt").write_text(
        "image,caption\n"
        "a.jpg,A dog runs .\n"
        'a.jpg,"A dog , running ."\n'
        "b.jpg,Two  cats sleep .\n"
        "b.jpg,\n"  # bad row: empty caption
        "c.jpg,A red square .\n"
        "d.jpg,Nothing to see .\n"
    )
    train = load_split("flickr8k", flickr, "train")
    assert [s.image.name for s in train.samples] == ["a.jpg", "b.jpg"]
    assert train.samples[0].captions == ("A dog runs .", "A dog , running .")
    assert train.samples[1].captions == ("Two cats sleep .",)  # whitespace collapsed
    assert (train.missing_images, train.bad_rows, train.uncaptioned) == (1, 1, 1)
    assert "1 missing images" in train.describe() and "1 bad rows" in train.describe()
    dev = load_split("flickr8k", flickr, "val")
    assert dev.split == "dev" and [s.image.name for s in dev.samples] == ["c.jpg"]
    assert len(train.limited(1).samples) == 1 and train.limited(1).missing_images == 1


def test_flickr_token_file(flickr: Path) -> None:
    (flickr / "Flickr8k.token.txt").write_text(
        "a.jpg#0\tA dog runs .\n"
        "a.jpg#1\tA brown dog .\r\n"
        "garbage line without a tab\n"
        "b.jpg#0\tTwo cats .\n"
        "c.jpg#0\tA red square .\n"
    )
    train = load_split("flickr8k", flickr, "train")
    assert {s.image.name: s.captions for s in train.samples} == {
        "a.jpg": ("A dog runs .", "A brown dog ."),
        "b.jpg": ("Two cats .",),
    }
    assert train.bad_rows == 1 and train.missing_images == 0  # d.jpg has no caption here
    assert train.uncaptioned == 2


def test_flickr30k_without_split_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "results_20130124.token").write_text("a.jpg#0\tA dog .\n")
    with pytest.raises(FatalError, match="karpathy"):
        load_split("flickr30k", tmp_path, "train")


def test_coco(tmp_path: Path) -> None:
    _jpeg(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    _jpeg(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg")
    doc = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
            {"id": 3, "file_name": "COCO_val2014_000000000003.jpg"},  # not on disk
            {"file_name": "no-id.jpg"},  # bad
        ],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "A man riding a wave."},
            {"image_id": 1, "id": 11, "caption": "A surfer.\n"},
            {"image_id": 2, "id": 12, "caption": "A plate of food."},
            {"image_id": 3, "id": 13, "caption": "A cat."},
            {"image_id": 99, "id": 14, "caption": "Orphan."},  # bad: unknown image
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(doc))
    dev = load_split("coco", tmp_path, "dev")
    assert [(s.image.name, s.captions) for s in dev.samples] == [
        ("COCO_val2014_000000000001.jpg", ("A man riding a wave.", "A surfer.")),
        ("COCO_val2014_000000000002.jpg", ("A plate of food.",)),
    ]
    assert (dev.missing_images, dev.bad_rows) == (1, 2)
    with pytest.raises(FatalError, match="captions_train"):
        load_split("coco", tmp_path, "train")


def test_karpathy(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "train2014" / "t.jpg")
    _jpeg(tmp_path / "images" / "val2014" / "r.jpg")
    _jpeg(tmp_path / "images" / "val2014" / "v.jpg")

    def entry(filepath: str, filename: str, split: str, *raw: str) -> dict:
        return {
            "filepath": filepath,
            "filename": filename,
            "split": split,
            "imgid": 0,
            "sentences": [{"raw": r, "tokens": r.lower().split()} for r in raw],
        }

    doc = {
        "dataset": "coco",
        "images": [
            entry("train2014", "t.jpg", "train", "A train."),
            entry("val2014", "r.jpg", "restval", "A restval photo."),
            entry("val2014", "v.jpg", "val", "A val photo.", "Another one."),
            entry("val2014", "x.jpg", "test", "Test."),
            {"split": "train"},  # bad: no file name
        ],
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(doc))
    train = load_split("karpathy", tmp_path, "train")
    assert [s.image.name for s in train.samples] == ["t.jpg", "r.jpg"]
    assert train.dataset == "karpathy-coco" and train.bad_rows == 1
    dev = load_split("karpathy", tmp_path / "dataset_coco.json", "dev")
    assert dev.samples[0].captions == ("A val photo.", "Another one.")
    assert load_split("karpathy", tmp_path, "test").missing_images == 1


def test_karpathy_flickr8k_without_filepath(tmp_path: Path) -> None:
    _jpeg(tmp_path / "Flicker8k_Dataset" / "a.jpg")
    doc = {
        "dataset": "flickr8k",
        "images": [{"filename": "a.jpg", "split": "val", "sentences": [{"tokens": ["a", "dog"]}]}],
    }
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(doc))
    dev = load_split("karpathy", tmp_path, "dev")
    assert [(s.image.name, s.captions) for s in dev.samples] == [("a.jpg", ("a dog",))]


def test_generic_csv_with_split_column(tmp_path: Path) -> None:
    _jpeg(tmp_path / "pics" / "1.png")
    _jpeg(tmp_path / "pics" / "2.png")
    (tmp_path / "captions.csv").write_text(
        "image,caption,split\npics/1.png,One.,train\npics/1.png,Uno.,train\npics/2.png,Two.,validation\n"
    )
    assert [s.captions for s in load_split("csv", tmp_path, "train").samples] == [("One.", "Uno.")]
    assert [s.image.name for s in load_split("csv", tmp_path, "dev").samples] == ["2.png"]


def test_generic_jsonl_hash_split(tmp_path: Path) -> None:
    names = [f"{i}.jpg" for i in range(30)]
    for name in names:
        _jpeg(tmp_path / name)
    lines = [json.dumps({"image": n, "captions": [f"Photo {n}.", "Another."]}) for n in names]
    lines += ["{not json", json.dumps({"image": "0.jpg"}), json.dumps(["a list"])]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    train = load_split("csv", tmp_path, "train")
    dev = load_split("csv", tmp_path / "captions.jsonl", "dev")
    assert train.bad_rows == 3
    got = sorted(s.image.name for s in train.samples + dev.samples)
    assert got == sorted(names) and 0 < len(dev.samples) < len(train.samples)
    assert not {s.image for s in train.samples} & {s.image for s in dev.samples}
    with pytest.raises(FatalError, match="no test split"):
        load_split("csv", tmp_path, "test")


def test_missing_data_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(FatalError):
        load_split("flickr8k", tmp_path / "nowhere", "train")
    with pytest.raises(FatalError, match="captions file"):
        load_split("flickr8k", tmp_path, "train")
    with pytest.raises(FatalError, match="unknown split"):
        load_split("flickr8k", tmp_path, "holdout")


def test_a_flickr8k_download_layout_with_real_photos(tmp_path: Path) -> None:
    """Flickr8k as its download unpacks (captions.txt, images/, the three split files), with the example photos."""
    from example_photos import CAPTIONS, NAMES, copy_photos

    copy_photos(tmp_path / "images")
    lines = ["image,caption"] + [f"{name},{text}" for name in NAMES for text in CAPTIONS[name]]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    for split, names in (("train", NAMES[:3]), ("dev", NAMES[3:4]), ("test", NAMES[4:])):
        (tmp_path / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    counts = {}
    for split in ("train", "dev", "test"):
        data = load_split("flickr8k", tmp_path, split)
        assert (data.missing_images, data.bad_rows, data.uncaptioned) == (0, 0, 0)
        assert all(s.captions == tuple(CAPTIONS[s.image.name]) for s in data.samples)
        assert all(Image.open(s.image).size[0] > 100 for s in data.samples)  # the photos themselves
        counts[split] = (len(data.samples), data.n_captions)
    assert counts == {"train": (3, 9), "dev": (1, 3), "test": (1, 3)}
