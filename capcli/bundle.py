"""The model bundle: locate it, read and validate ``model.json``, check every file.

A bundle is a directory holding ``encoder.onnx``, ``decoder.onnx`` (one decode
step), ``model.json`` (format in the README) and, optionally,
``decoder.int8.onnx``: the same step with int8 matrix products, which the
runtime prefers on the CPU (``capcli export --quantize`` adds it), and
(format 4) ``search.onnx`` / ``search.int8.onnx``: the whole decode loop over
one of those decoders as one graph, its weights read from the decoder file
(see :mod:`capcli.graph_search`), and ``trigrams.npy``: the trigrams of the
model's training text as word ids, for ``--unseen-trigram-penalty`` (see
:mod:`capcli.phrasing`; ``capcli export --trigrams-from`` adds it).  :func:`load_bundle` checks
everything a run depends on before any image is touched -- the JSON, the
format version, the sha256 of each file, the trigram table's word ids, and the ONNX graphs' input and
output shapes against the vocabulary, grid and sizes that ``model.json``
declares -- and raises :class:`~capcli.errors.BundleError` naming the file and
the problem.  The ONNX bytes that were checked are the bytes the runtime loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from capcli import store
from capcli.decode import CONCEPT_WEIGHT, STATE_NAMES, state_names
from capcli.errors import BundleError, UsageError
from capcli.onnxinfo import Shape, Signature, read_signature
from capcli.phrasing import read_table
from capcli.text import SPECIALS, Vocab

FORMAT = "capcli-bundle"
# 4: optional search graphs (search.onnx, search.int8.onnx: the decode loop in one graph, see "search");
# 3: optional tagger ("tags": class probabilities from the encoder) and concept input ("concept");
# 2: per-image decoder context, keys (B, A, L); 1 (capcli 0.1): context repeated per row
FORMAT_VERSION = 4
READABLE_VERSIONS = (
    2,
    3,
    4,
)  # a version-2 bundle is a version-3 bundle without tags or concepts, 3 is 4 without search graphs
MODEL_JSON = "model.json"
ENCODER, DECODER = "encoder.onnx", "decoder.onnx"
INT8_DECODER = "decoder.int8.onnx"  # optional: the decoder step with int8 weights, for CPUs
# optional (format 4): the decode loop over each decoder as one graph, its weights external data in the decoder file
SEARCH_GRAPHS = {DECODER: "search.onnx", INT8_DECODER: "search.int8.onnx"}
TRIGRAMS = "trigrams.npy"  # optional: the training text's trigrams as word ids (capcli.phrasing), any format
# The arithmetic a run uses: auto takes the int8 decoder on the CPU when there is one; float16 is the float
# decoder behind an encoder computing in float16 (capcli.float16)
PRECISIONS = ("auto", "float", "int8", "float16")
SEARCH_MODES = ("auto", "numpy", "graph")  # how the decode loop runs (see capcli.graph_search)
ENV_VAR = "CAPCLI_MODEL"
DECODER_KINDS = tuple(STATE_NAMES)  # ("gru", "lstm")
RESIZE_RULES = ("squash",)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the encoder's input: resize, then (x/255 - mean) / std, CHW."""

    size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "squash"  # stretch to size, ignoring the aspect ratio
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "resize": self.resize,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict[str, Any]  # model.json as read
    vocab: Vocab
    preprocess: Preprocess
    grid: tuple[int, int]  # (gh, gw) attention grid; L = gh * gw regions
    decoder: str  # "gru" | "lstm"
    max_len: int  # words, not counting <end>
    provenance: dict[str, Any]
    files: Mapping[str, bytes] = field(repr=False)  # checked bytes by file name: the ONNX graphs and TRIGRAMS
    tag_labels: tuple[str, ...] = ()  # names of the encoder's "tags" classes; () = the bundle has no tagger
    concept_dim: int = 0  # width of the per-image "concept" decoder input; 0 = none
    # (M, 3) TRIGRAMS' word ids, sorted; None: the bundle has no table
    trigrams: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def has_tags(self) -> bool:
        return bool(self.tag_labels)

    @property
    def context_names(self) -> tuple[str, ...]:
        """Per-image decoder inputs, computed once by the encoder and bound to every step."""
        return ("features", "keys", "concept") if self.concept_dim else ("features", "keys")

    @property
    def data_files(self) -> tuple[str, ...]:
        """Files no graph is made from (the trigram table): a rewritten bundle carries them as they are."""
        return tuple(name for name in self.files if name == TRIGRAMS)

    @property
    def has_int8_decoder(self) -> bool:
        return INT8_DECODER in self.files

    def search_graph(self, decoder: str) -> str | None:
        """The search graph over ``decoder`` (a file name), when the bundle has one made from these very bytes."""
        name = SEARCH_GRAPHS[decoder]
        made_from = self.meta.get("search", {}).get(name, {}).get("decoder_sha256")
        return name if name in self.files and made_from == self.meta["files"][decoder]["sha256"] else None

    def says_once(self, graph: str | None) -> bool:
        """Whether the search graph ``graph`` (a file name) takes the ``say_once`` mask of the rule against
        repeated words (graphs written before that rule do not)."""
        return bool(graph and self.meta.get("search", {}).get(graph, {}).get("say_once"))

    @property
    def state_names(self) -> tuple[str, ...]:
        """Recurrent state tensors: encoder outputs and decoder inputs (``*_out`` outputs)."""
        return state_names(self.decoder, bool(self.concept_view))

    @property
    def concept_view(self) -> float:
        """A two-view decoder's weight of its concept-only view (0: one view)."""
        return float(self.meta["decoder"].get("concept_view", 0.0))

    @property
    def backbone(self) -> str:
        return str(self.meta["backbone"]["name"])


def default_bundle_path() -> Path | None:
    """The bundle shipped inside the package, when this install has one."""
    folder = resources.files("capcli").joinpath("models").joinpath("default")
    if folder.joinpath(MODEL_JSON).is_file():
        return Path(str(folder))
    return None


def named_bundles() -> dict[str, Path]:
    """Every model a name can choose: ``default`` (the packaged one, when there is one), then the store's."""
    default = default_bundle_path()
    return {**({store.DEFAULT: default} if default is not None else {}), **store.installed()}


def resolve_bundle_path(path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """(bundle directory, where it came from): argument, $CAPCLI_MODEL, or the packaged default.

    The argument and $CAPCLI_MODEL are a directory or a model name (:func:`named_bundles`).
    """
    if path is not None and str(path) != "":
        return _directory_or_name(str(path), "--model")
    env = os.environ.get(ENV_VAR, "")
    if env:
        return _directory_or_name(env, f"${ENV_VAR}")
    default = default_bundle_path()
    if default is not None:
        return default, "packaged default"
    raise BundleError(
        f"no model: pass --model PATH or set {ENV_VAR} to a bundle directory "
        "(this installation ships no default model; `capcli export` makes one from a checkpoint)"
    )


def _directory_or_name(value: str, origin: str) -> tuple[Path, str]:
    """A path that exists wins over a name; a single word that is neither is an unknown name (UsageError)."""
    path = Path(value)
    if path.exists() or not store.could_be_name(value):
        return path, origin
    named = named_bundles()
    if value in named:
        return named[value], f"{origin} {value!r}"
    raise UsageError(
        f"{origin}: {value!r} is neither a directory nor a model name; "
        f"the names are: {', '.join(named) or 'none'} (`capcli models add NAME BUNDLE` installs one)"
    )


def load_bundle(path: str | os.PathLike[str] | None = None) -> Bundle:
    """Find and fully validate a bundle; see the module docstring."""
    root, origin = resolve_bundle_path(path)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "does not exist"
        raise BundleError(f"model bundle {str(root)!r} (from {origin}) {what}")
    meta = _check_version(read_meta_json(root / MODEL_JSON), root / MODEL_JSON)
    spec = _parse_meta(meta, root / MODEL_JSON)
    optional = (INT8_DECODER, *SEARCH_GRAPHS.values(), TRIGRAMS)
    names = (ENCODER, DECODER, *(name for name in optional if name in meta["files"]))
    files = {name: read_checked(root / name, meta) for name in names}
    bundle = Bundle(root, meta, files=files, trigrams=_trigrams(files, root, len(spec["vocab"])), **spec)
    for name, data in files.items():
        if name == TRIGRAMS:
            continue
        try:
            signature = read_signature(data)
        except ValueError as exc:
            raise BundleError(f"{root / name}: not a readable ONNX model ({exc})") from None
        _check_signature(bundle, name, signature)
    return bundle


def _trigrams(files: Mapping[str, bytes], root: Path, vocab_size: int) -> np.ndarray | None:
    if TRIGRAMS not in files:
        return None
    try:
        return read_table(files[TRIGRAMS], vocab_size)
    except ValueError as exc:
        raise BundleError(f"{root / TRIGRAMS}: not a trigram table of this vocabulary: {exc}") from None


def install_bundle(name: str, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Copy the bundle directory ``path`` into the model store as ``name``, validated; its new path.

    The copy is validated again before it is renamed into place; an installed
    model of that name is replaced only with ``force``.
    """
    store.refuse_existing(store.check_name(name), force)  # before the slow validation
    source = load_bundle(path)  # errors name the user's folder, not a temporary copy
    # the bytes whose sha256 was checked
    files = {MODEL_JSON: (source.path / MODEL_JSON).read_bytes(), **source.files}
    return store.add(name, files, check=load_bundle, force=force)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_meta_json(path: Path) -> dict[str, Any]:
    """model.json as a dict, once it is readable JSON of the capcli bundle format (any version)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (a bundle directory needs {MODEL_JSON}, {ENCODER}, {DECODER})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: expected a JSON object")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: not a capcli bundle (format is {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def _check_version(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        hint = ""
        if version == 1:
            hint = f" (written by capcli 0.1: `capcli export {path.parent} -o NEW --upgrade` converts it)"
        elif isinstance(version, int) and version > FORMAT_VERSION:
            hint = " (newer than this capcli: upgrade capcli)"
        raise BundleError(
            f"{path}: unsupported format_version {version!r}{hint}; "
            f"this capcli reads {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return meta


def _parse_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The typed fields of model.json; BundleError naming the first bad one."""

    def bad(key: str, expected: str) -> BundleError:
        return BundleError(f"{path}: field {key!r} must be {expected}, found {meta.get(key)!r}"[:500])

    def ints(value: Any, n: int) -> bool:
        return isinstance(value, list) and len(value) == n and all(type(v) is int and v > 0 for v in value)

    def floats(value: Any, n: int) -> bool:
        return isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) for v in value)

    tokens = meta.get("vocab", {}).get("tokens") if isinstance(meta.get("vocab"), dict) else None
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise bad("vocab", '{"tokens": [strings]}')
    try:
        vocab = Vocab(tuple(tokens))
    except ValueError:
        raise BundleError(f"{path}: vocabulary must start with the special tokens {list(SPECIALS)}") from None
    if len(set(tokens)) != len(tokens):
        raise BundleError(f"{path}: vocabulary has duplicate tokens")
    if type(meta.get("max_len")) is not int or meta["max_len"] < 1:
        raise bad("max_len", "a positive integer")
    pre = meta.get("preprocess")
    if not (
        isinstance(pre, dict)
        and ints(pre.get("size"), 2)
        and floats(pre.get("mean"), 3)
        and floats(pre.get("std"), 3)
        and all(s != 0 for s in pre["std"])
        and pre.get("resize") in RESIZE_RULES
        and pre.get("interpolation") in INTERPOLATIONS
    ):
        raise bad(
            "preprocess",
            f'{{"size": [H, W], "mean": [3 numbers], "std": [3 non-zero numbers], '
            f'"resize": one of {list(RESIZE_RULES)}, "interpolation": one of {list(INTERPOLATIONS)}}}',
        )
    if not ints(meta.get("grid"), 2):
        raise bad("grid", "[gh, gw], positive integers")
    for key in ("feature_dim", "attention_dim"):
        if type(meta.get(key)) is not int or meta[key] < 1:
            raise bad(key, "a positive integer")
    dec = meta.get("decoder")
    if not (
        isinstance(dec, dict)
        and dec.get("kind") in DECODER_KINDS
        and all(type(dec.get(k)) is int and dec[k] > 0 for k in ("hidden", "embed"))
        and type(dec.get("concept_view", 0.0)) in (int, float)
        and 0 <= dec.get("concept_view", 0.0) < 1
    ):
        raise bad("decoder", '{"kind": "gru"|"lstm", "hidden": int, "embed": int[, "concept_view": 0 <= w < 1]}')
    if not (isinstance(meta.get("backbone"), dict) and isinstance(meta["backbone"].get("name"), str)):
        raise bad("backbone", '{"name": string, ...}')
    files = meta.get("files")
    if not (
        isinstance(files, dict)
        and all(isinstance(files.get(n), dict) for n in (ENCODER, DECODER))
        and all(isinstance(files.get(name, {}), dict) for name in (INT8_DECODER, *SEARCH_GRAPHS.values(), TRIGRAMS))
    ):
        raise bad("files", f'{{"{ENCODER}": {{"sha256": hex}}, "{DECODER}": {{"sha256": hex}}}}')
    provenance = meta.get("provenance", {})
    if not isinstance(provenance, dict):
        raise bad("provenance", "an object")
    tags = meta.get("tags", {"labels": []})
    if not (
        isinstance(tags, dict)
        and isinstance(tags.get("labels"), list)
        and all(isinstance(t, str) for t in tags["labels"])
    ):
        raise bad("tags", '{"labels": [class names in the tagger\'s order]}')
    concept = meta.get("concept", {"dim": 0})
    if not (isinstance(concept, dict) and type(concept.get("dim")) is int and concept["dim"] >= 0):
        raise bad("concept", '{"dim": int, "top_k": int}')
    return {
        "vocab": vocab,
        "preprocess": Preprocess(
            size=(pre["size"][0], pre["size"][1]),
            mean=(float(pre["mean"][0]), float(pre["mean"][1]), float(pre["mean"][2])),
            std=(float(pre["std"][0]), float(pre["std"][1]), float(pre["std"][2])),
            resize=pre["resize"],
            interpolation=pre["interpolation"],
        ),
        "grid": (meta["grid"][0], meta["grid"][1]),
        "decoder": dec["kind"],
        "max_len": meta["max_len"],
        "provenance": provenance,
        "tag_labels": tuple(tags["labels"]),
        "concept_dim": concept["dim"],
    }


def read_checked(path: Path, meta: dict[str, Any]) -> bytes:
    expected = meta["files"][path.name].get("sha256")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing from the bundle") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    actual = sha256_bytes(data)
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 mismatch (model.json expects {expected}, the file has {actual}): "
            "the file is corrupt or belongs to another bundle"
        )
    return data


# The search graphs' inputs beyond the context and state (scalars, and (steps,) normalisers).
SEARCH_GRAPH_INPUTS: dict[str, Shape] = {
    **{name: () for name in ("beam", "max_len", "min_len", "start_id", "end_id")},
    "end_norm": (None,),
    "partial_norm": (None,),
}


def _check_signature(bundle: Bundle, name: str, sig: Signature) -> None:
    """The graph's names and fixed sizes must agree with model.json."""
    meta = bundle.meta
    hidden = meta["decoder"]["hidden"]
    regions = bundle.grid[0] * bundle.grid[1]
    d, a, v = meta["feature_dim"], meta["attention_dim"], len(bundle.vocab)
    states = {s: (None, 1 if s == CONCEPT_WEIGHT else hidden) for s in bundle.state_names}
    context: dict[str, Shape] = {"features": (None, regions, d), "keys": (None, a, regions)}
    if bundle.concept_dim:
        context["concept"] = (None, bundle.concept_dim)
    if name in SEARCH_GRAPHS.values():
        masks = ["banned", "dangling"] + (["say_once"] if bundle.says_once(name) else [])
        inputs: dict[str, Shape] = {**context, **states, **SEARCH_GRAPH_INPUTS, **{m: (v,) for m in masks}}
        outputs: dict[str, Shape] = {"ids": (None, None), "lengths": (None,), "scores": (None,), "finished": (None,)}
    elif name == ENCODER:
        inputs = {"image": (None, 3, *bundle.preprocess.size)}
        outputs = {**context, **states}
        if bundle.has_tags:
            outputs["tags"] = (None, len(bundle.tag_labels))
    else:
        inputs = {"token": (None,), **states, **context}
        outputs = {
            "logprobs": (None, v),
            **{f"{s}_out": shape for s, shape in states.items()},
            "alpha": (None, regions),
        }
    what = {
        ("logprobs", 1): f"the vocabulary size ({v} tokens in {MODEL_JSON})",
        ("alpha", 1): f"the grid {bundle.grid[0]}x{bundle.grid[1]} = {regions} regions",
        ("features", 1): f"the grid {bundle.grid[0]}x{bundle.grid[1]} = {regions} regions",
        ("keys", 2): f"the grid {bundle.grid[0]}x{bundle.grid[1]} = {regions} regions",
        ("tags", 1): f"the {len(bundle.tag_labels)} tag labels in {MODEL_JSON}",
    }
    path = bundle.path / name
    for kind, expected, actual in (("input", inputs, sig.inputs), ("output", outputs, sig.outputs)):
        if set(expected) != set(actual):
            raise BundleError(
                f"{path}: {kind}s are {sorted(actual)}, expected {sorted(expected)} for a {bundle.decoder} decoder"
            )
        for tensor, shape in expected.items():
            found = actual[tensor]
            if len(found) != len(shape):
                raise BundleError(f"{path}: {kind} {tensor!r} has rank {len(found)}, expected {len(shape)}")
            for axis, (want, got) in enumerate(zip(shape, found)):
                if want is not None and isinstance(got, int) and got != want:
                    meaning = what.get((tensor, axis), f"{want} from {MODEL_JSON}")
                    raise BundleError(
                        f"{path}: {kind} {tensor!r} has size {got} on axis {axis}, which does not match {meaning}"
                    )
