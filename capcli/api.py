"""capcli's Python API: load a model once, then caption paths, URLs, PIL images or arrays.

>>> import capcli
>>> model = capcli.load()                      # the packaged model, CUDA when it works
>>> for record in model.caption(["photo.jpg", "https://example.com/cat.png"]):
...     print(record["source"], record["caption"])
>>> model.caption_one("photo.jpg")["caption"]

Records are the dictionaries ``capcli caption`` writes as JSONL: ``index``,
``source``, ``status`` ("ok" or "error"), ``caption``, ``score`` and, for a
failed input, ``error_kind`` and ``error``. Every input gives exactly one
record, in input order; a bad input never stops the others.

The CLI (``capcli caption``, ``url-list``, ``eval``, ``bench``) is built on
this module. onnxruntime is imported by :func:`load`, torch never.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from capcli.decode import NO_REPEAT_NGRAM, Decoding
from capcli.errors import ItemError
from capcli.images import DEFAULT_MAX_PIXELS
from capcli.pipeline import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_WORKERS,
    Annotate,
    BatchCaptioner,
    Fetch,
    Keep,
    Reader,
    Record,
    caption_items,
    make_reader,
)
from capcli.sources import Item

if TYPE_CHECKING:
    from capcli.bundle import Bundle, Preprocess

#: What :meth:`Model.caption` accepts as one input: a file path, an http(s) URL,
#: a PIL image, an array ``(H, W[, 3|4])`` (uint8, or float in 0..1), or an
#: :class:`~capcli.sources.Item` (as the CLI makes them).
Input = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, Item]

__all__ = ["Input", "Model", "Record", "load"]


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    beam: int = 3,
    max_len: int | None = None,
    precision: str = "auto",
    length_penalty: float = 0.7,
    tags: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fetch: Fetch | None = None,
    threads: int | None = None,
    lanes: int | None = None,
    min_len: int = 1,
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
    allow_dangling_end: bool = False,
    no_repeated_words: bool = True,
    num_captions: int = 1,
    sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    prefix: str = "",
    unseen_trigram_penalty: float = 0.0,
    search: str = "auto",
) -> Model:
    """Load a model bundle and return a :class:`Model` ready to caption.

    Args:
        model: bundle directory or model name (``capcli models``; an existing directory wins); ``None`` means
            ``$CAPCLI_MODEL``, then the packaged model.
        device: ``"auto"`` (CUDA when it really works, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        beam: beam width; 1 is greedy decoding.
        max_len: longest caption in words (``None``: the bundle's).
        precision: ``"auto"``, ``"float"``, ``"int8"`` or ``"float16"`` (``auto``: the bundle's int8
            decoder on the CPU when it has one; ``float16``: the encoder in float16 arithmetic, for GPUs).
        length_penalty: beam ranking, log-probability / length ** this.
        tags: also give each record the tagger's top ``tags`` ImageNet labels (``"tags"`` field).
        batch_size: images captioned together.
        workers: threads reading and decoding images ahead of the model.
        max_pixels: refuse larger images (error kind ``too_large``).
        fetch: URL -> bytes for URL inputs (default: :func:`capcli.fetch.fetch_bytes` with its
            default timeouts, size cap and private-network guard).
        threads: onnxruntime threads per lane on the CPU (default: physical cores / lanes).
        lanes: batches captioned at once (default 2, or 1 on a one-core machine).
        min_len: no caption shorter than this many words.
        no_repeat_ngram: a caption never holds the same n words twice (0: off).
        allow_dangling_end: let a caption end on "a", "the", "of" and the like.
        no_repeated_words: a caption says each word at most once but the articles, prepositions, pronouns
            and the like of :data:`capcli.decode.REPEATABLE_WORDS` (no "A plate of food on a plate."); ``False``
            lets any word come again.
        num_captions: also give each record the beam's ``num_captions`` best captions, best first
            (``"captions"``: ``[{"caption", "score"}, ...]``); at most ``beam``.
        sample: draw each word instead of searching, with ``temperature`` (default 1), nucleus ``top_p``
            (default 1) and ``seed`` (default 0): an input's caption depends only on the seed and its
            index in ``inputs``, not on the batch.
        prefix: words every caption starts with ("a photo of"); each must be in the model's vocabulary.
        unseen_trigram_penalty: taken off the log-probability of each word that would make a trigram (its
            two words before included, and the start and end) no sentence of the model's training text has
            ("A living room is sitting on a bed."); 3 leaves almost none.  Needs the bundle's trigram
            table; the numpy search runs it.  0: off.
        search: ``"numpy"`` (the step-by-step search, with attention maps), ``"graph"`` (the bundle's
            search graph: the whole decode loop in one onnxruntime call, the same captions, no attention
            maps) or ``"auto"`` (the graph where it was measured faster and the options allow it).

    Raises:
        capcli.errors.UsageError: a bad ``device`` or decoding option (named as its command-line option),
            a prefix word the model does not know, ``unseen_trigram_penalty`` for a bundle without a trigram table.
        capcli.errors.FatalError: no model, a broken bundle, CUDA asked for but not usable.
    """
    from capcli.bundle import load_bundle
    from capcli.device import parse_device

    parse_device(device)
    decoding = Decoding.from_options(
        beam=beam,
        max_len=max_len,
        length_penalty=length_penalty,
        min_len=min_len,
        no_repeat_ngram=no_repeat_ngram,
        allow_dangling_end=allow_dangling_end,
        no_repeated_words=no_repeated_words,
        num_captions=num_captions,
        sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        prefix=prefix,
        unseen_trigram_penalty=unseen_trigram_penalty,
    )
    bundle = load_bundle(str(model) if model is not None else None)
    from capcli.runtime import Captioner  # onnxruntime: imported only here

    captioner = Captioner(
        bundle,
        device=device,
        decoding=decoding,
        precision=precision,
        tags=tags,
        threads=threads,
        lanes=lanes,
        search=search,
    )
    return Model(
        captioner,
        bundle.preprocess,
        bundle=bundle,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        fetch=fetch,
    )


class Model:
    """A loaded captioner; :func:`load` makes one.

    ``Model(captioner, preprocess)`` also wraps any object with
    ``caption(images (B, 3, H, W)) -> [objects with .text and .score]`` (tests use fakes; one whose
    ``takes_pixels`` is true gets (B, H, W, 3) uint8 pixels instead).
    """

    def __init__(
        self,
        captioner: BatchCaptioner,
        preprocess: Preprocess,
        *,
        bundle: Bundle | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fetch: Fetch | None = None,
    ) -> None:
        self.captioner = captioner
        self.preprocess = preprocess
        self.bundle = bundle
        self.batch_size = batch_size
        self.workers = workers
        self.max_pixels = max_pixels
        self.fetch = fetch

    @property
    def device(self) -> str:
        """Where the model runs: ``"cpu"`` or ``"cuda:N"`` (empty when unknown)."""
        return str(getattr(self.captioner, "device", ""))

    def caption(
        self,
        inputs: Iterable[Input],
        *,
        stop: threading.Event | None = None,
        annotate: Annotate | None = None,
        thumbnail: int | None = None,
        keep: Keep | None = None,
    ) -> Iterator[Record]:
        """Caption ``inputs`` lazily: one record per input, in input order.

        ``inputs`` may be any iterable, endless included; only a bounded
        window is read ahead. Setting ``stop`` ends the run after the batch
        being captioned. ``annotate(item, caption, loaded)`` and ``thumbnail``
        add fields to captioned records (the CLI's attention figures use them); ``keep(item, data)``
        gets each downloaded image's bytes (``url-list --save-images``).
        """
        read = self.reader(thumbnail, keep)
        items = (_item(index, value) for index, value in enumerate(inputs))
        return caption_items(
            items, self.captioner, read, batch_size=self.batch_size, workers=self.workers, stop=stop, annotate=annotate
        )

    def caption_one(self, image: Input) -> Record:
        """The record of one input; raises :class:`capcli.errors.ItemError` when it cannot be captioned.

        >>> model.caption_one("photo.jpg")["caption"]
        'A dog runs through the grass.'
        """
        [record] = self.caption([image])
        if record["status"] != "ok":
            raise ItemError(record["error_kind"], record["error"])
        return record

    def reader(self, thumbnail: int | None = None, keep: Keep | None = None) -> Reader:
        """The function that reads one :class:`~capcli.sources.Item` into the model's input array."""
        return make_reader(
            self.preprocess,
            max_pixels=self.max_pixels,
            fetch=self._fetch(),
            thumbnail=thumbnail,
            keep=keep,
            pixels=getattr(self.captioner, "takes_pixels", False),
        )

    def _fetch(self) -> Fetch:
        if self.fetch is None:
            from capcli.fetch import FetchOptions, fetch_bytes

            self.fetch = functools.partial(fetch_bytes, options=FetchOptions())
        return self.fetch


def _item(index: int, value: Input) -> Item:
    """One input as an :class:`Item` numbered ``index``."""
    if isinstance(value, Item):
        return value
    if isinstance(value, (Image.Image, np.ndarray)):
        name = getattr(value, "filename", "") or f"<{type(value).__name__} {index}>"
        return Item(index, str(name), image=value)
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
            return Item(index, text, url=text)
        return Item(index, text, path=text)
    return Item(
        index, repr(value)[:80], error=ItemError("unsupported_source", f"not an image input: a {type(value).__name__}")
    )
