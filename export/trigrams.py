"""Bundle -> the same bundle with the trigram table of its training text (``capcli export --trigrams-from``).

The table (``trigrams.npy``, :mod:`capcli.phrasing`) is what ``--unseen-trigram-penalty`` reads: every
trigram of the training sentences, start and end included, as word ids of the bundle's vocabulary.  The
sentences are the train split's captions of each data set named, as ``capcli train`` reads it, and for
``coco-everyday`` also its caption-only ``text-captions.csv`` (``capcli train-grounded`` trains on both).
model.json records, under ``provenance.trigrams``, where the sentences came from and how many there were.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

from capcli.export.onnx_export import _prepare_target, write_meta

from capcli.atomic import move_into_place, temp_dir_beside
from capcli.bundle import TRIGRAMS, load_bundle, sha256_bytes
from capcli.datasets import load_split, load_text_captions
from capcli.phrasing import table_bytes, trigram_table
from capcli.train.phrasing import training_text

TEXT_ONLY = {"coco-everyday": "text-captions.csv"}  # a data set's caption-only sentences, read when present


def trigram_bundle(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    data: Sequence[tuple[str, str | os.PathLike[str]]],
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Write the bundle at ``source`` with the trigram table of ``data`` ((data set kind, folder) pairs) to
    ``out_dir``, atomically (a table it had is replaced)."""
    src = load_bundle(source)  # validated before anything is read or written
    sentences, origins = [], []
    for dataset, folder in data:
        split = load_split(dataset, Path(folder), "train")
        text = Path(folder) / TEXT_ONLY.get(dataset, "")
        read = training_text([split], load_text_captions(text) if dataset in TEXT_ONLY and text.is_file() else {})
        sentences += read
        origins.append({"dataset": dataset, "path": str(folder), "split": "train", "sentences": len(read)})
    table = trigram_table(sentences, src.vocab)
    data_bytes = table_bytes(table)
    target = Path(out_dir)
    _prepare_target(target, overwrite)
    with temp_dir_beside(target) as tmp:
        for name, content in src.files.items():
            (tmp / name).write_bytes(content)
        (tmp / TRIGRAMS).write_bytes(data_bytes)
        meta = copy.deepcopy(src.meta)
        meta["files"][TRIGRAMS] = {"sha256": sha256_bytes(data_bytes)}
        meta.setdefault("provenance", {})["trigrams"] = {
            "file": TRIGRAMS,
            "from": origins,
            "sentences": len(sentences),
            "trigrams": len(table),
            **({"command": command} if command else {}),
        }
        write_meta(tmp, meta)
        load_bundle(tmp)  # the table reads back against the vocabulary
        move_into_place(tmp, target)
    return target
