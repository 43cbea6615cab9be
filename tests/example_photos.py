"""The photos shipped in ``examples/`` (public domain / CC0, see examples/README.md), for tests.

With captions written for them here, so that training, export and captioning
tests run on real photos in any clone, without a data set beside it.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Three reference captions per photo (Flickr8k style: a sentence, a space before the full stop).
CAPTIONS: dict[str, list[str]] = {
    "astronaut.jpg": [
        "A smiling woman in an orange flight suit stands in front of a flag .",
        "An astronaut in an orange suit holds a white helmet .",
        "A woman in a space suit poses beside a model of a shuttle .",
    ],
    "camera.jpg": [
        "A man in a dark coat looks through a camera on a tripod .",
        "A man films with a camera on a grassy field .",
        "A black and white photo of a man with a camera .",
    ],
    "cat.jpg": [
        "A tabby cat looks at the camera .",
        "A close view of a brown striped cat with green eyes .",
        "A cat with big eyes stares ahead .",
    ],
    "coffee.jpg": [
        "A cup of coffee sits on a red saucer on a wooden table .",
        "A small red cup of espresso with a spoon .",
        "A coffee cup on a saucer on a table .",
    ],
    "rocket.jpg": [
        "A rocket stands on the launch pad at night .",
        "A white rocket between tall towers under a blue sky .",
        "Lights shine around a rocket waiting to launch .",
    ],
}
NAMES = sorted(CAPTIONS)


def example_paths() -> list[Path]:
    """The example photos, sorted by name."""
    return [EXAMPLES / name for name in NAMES]


def copy_photos(folder: Path, names: list[str] | None = None, prefix: str = "") -> list[Path]:
    """Copy the named example photos (default: all) into ``folder`` as ``prefix + name``."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names or NAMES:
        copies.append(Path(shutil.copyfile(EXAMPLES / name, folder / f"{prefix}{name}")))
    return copies


_WHO = [
    "a dog",
    "a black dog",
    "two dogs",
    "a brown dog",
    "a girl",
    "a little boy",
    "a man",
    "a woman",
    "two children",
    "a group of people",
    "a white dog",
    "a young girl",
]
_DOES = ["runs", "plays", "jumps", "walks", "sits", "stands", "rides a bike", "climbs", "swims", "looks up"]
_WHERE = [
    "on the beach",
    "in the grass",
    "through the snow",
    "in the water",
    "on a street",
    "in a park",
    "near a fence",
    "on a rock",
    "in front of a building",
    "on the sand",
    "in a field",
    "by the lake",
]


def synthetic_captions(images: int, per_image: int = 3) -> dict[str, list[str]]:
    """Flickr-like references for ``images`` made-up images: each image's captions share its subject and
    place, as real references of one photo do, and images overlap in words, as real ones do."""
    combos = list(itertools.product(_WHO, _DOES, _WHERE))
    step = 37  # coprime with the number of combinations: images spread over subjects, actions and places
    captions: dict[str, list[str]] = {}
    for i in range(images):
        who, does, where = combos[(i * step) % len(combos)]
        variants = [f"{who} {does} {where} .", f"{who} {does} .", f"{who} is {where} ."]
        variants += [f"{who} {_DOES[(i + k) % len(_DOES)]} {where} ." for k in range(1, per_image)]
        captions[f"image{i:03d}.jpg"] = [v[0].upper() + v[1:] for v in variants[:per_image]]
    return captions
