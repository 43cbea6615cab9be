"""An older bundle -> this capcli's format, without its checkpoint (``capcli export OLD -o NEW --upgrade``).

Format 2 or 3 -> 4 adds the search graphs (:mod:`capcli.export.search_graph`)
over the bundle's decoders, the other files unchanged; they are checked to
give the numpy search's captions and scores on the check images (greedy and
beam 3) before the bundle is moved into place.  A format-4 bundle whose
graphs are missing, were made from other decoder bytes or predate the rule of
words said once (:data:`capcli.decode.REPEATABLE_WORDS`) gets them (re)made.

Format 1 (capcli 0.1) -> today's format, graphs included:

Format 2 changed two graph interfaces, not the model:

- encoder.onnx outputs the attention keys as (B, A, L) instead of (B, L, A):
  the upgrade appends a Transpose to the old graph;
- decoder.onnx reads each image's context once, for all the rows of that
  image, instead of a copy per row: the upgrade rebuilds the decoder step in
  PyTorch from the old graph's weights (they keep their training names; the
  attention score's weight is the one unnamed (A, 1) matrix) and exports it
  with today's :class:`~export.onnx_export.DecoderStep`.

The new graphs are then run against the old ones on the same inputs (encoder
outputs; decoder steps with the old graph fed the context repeated per row,
both fed the same tokens), and the bundle is moved into place only when every
difference is within the tolerance.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from capcli.export.onnx_export import (
    DEFAULT_OPSET,
    _fix_context_sizes,
    _prepare_target,
    export_decoder,
    write_meta,
)
from capcli.export.parity import DEFAULT_TOLERANCE, ParityError, check_pixels
from capcli.export.search_graph import add_search_graphs

from capcli import __version__
from capcli.atomic import move_into_place, temp_dir_beside
from capcli.bundle import (
    DECODER,
    ENCODER,
    FORMAT_VERSION,
    MODEL_JSON,
    SEARCH_GRAPHS,
    load_bundle,
    read_checked,
    read_meta_json,
    sha256_bytes,
)
from capcli.decode import Decoding
from capcli.errors import FatalError
from capcli.train.model import Decoder, ModelConfig

OLD_VERSION = 1
STEPS = 5  # decoder steps compared
ROWS_PER_IMAGE = 2  # decoder rows per image in the comparison (a beam's rows)
COMPARE_IMAGES = 3  # photos compared (or random images without photos)


def upgrade_bundle(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Write today's version of the older bundle at ``source`` to ``out_dir``, atomically.

    ``images``: photos or folders for the comparison (up to 3 images; random
    inputs without them).  ParityError (nothing written) above ``tolerance``
    (format 1), or when a search graph's captions differ from the numpy search's.
    """
    src = Path(source)
    if read_meta_json(src / MODEL_JSON).get("format_version") != OLD_VERSION:
        return add_graphs(src, out_dir, images=images, overwrite=overwrite, command=command)
    meta = _old_meta(src)
    files = {name: read_checked(src / name, meta) for name in (ENCODER, DECODER)}
    cfg = ModelConfig.from_dict(meta["model_config"])
    target = Path(out_dir)
    _prepare_target(target, overwrite)
    with temp_dir_beside(target) as tmp:
        (tmp / ENCODER).write_bytes(_transpose_keys(files[ENCODER]))
        _fix_context_sizes(tmp / ENCODER, cfg)
        regions = cfg.grid[0] * cfg.grid[1]
        features = torch.randn(2, regions, cfg.feature_dim)  # (2, L, D) tracing inputs
        keys = torch.randn(2, cfg.attention_dim, regions)  # (2, A, L)
        export_decoder(
            _decoder_from_graph(files[DECODER], cfg),
            cfg,
            (features, keys),
            tmp / DECODER,
            meta.get("opset", DEFAULT_OPSET),
        )
        new_meta = copy.deepcopy(meta)
        new_meta["format_version"] = FORMAT_VERSION
        new_meta["files"] = {name: {"sha256": sha256_bytes((tmp / name).read_bytes())} for name in (ENCODER, DECODER)}
        upgrade = {
            "from_format": OLD_VERSION,
            "source": {"path": str(src), **{name: meta["files"][name]["sha256"] for name in (ENCODER, DECODER)}},
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "capcli": __version__,
            "torch": torch.__version__,
            **({"command": command} if command else {}),
        }
        new_meta.setdefault("provenance", {})["upgrade"] = upgrade
        add_search_graphs(tmp, new_meta)
        write_meta(tmp, new_meta)
        upgrade["parity"] = compare_with_old(files, tmp, images)
        worst = max(upgrade["parity"]["max_abs_diff"].items(), key=lambda kv: kv[1])
        if worst[1] > tolerance:
            raise ParityError(
                f"the upgraded graphs disagree with the old ones: {worst[0]} differs by {worst[1]:.2e} "
                f"(tolerance {tolerance:g}); no bundle was written"
            )
        write_meta(tmp, new_meta)
        move_into_place(tmp, target)
    return target


def add_graphs(
    source: Path,
    out_dir: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """The format-2/3/4 bundle at ``source`` with (new) search graphs, as format 4, at ``out_dir``."""
    src = load_bundle(source)  # validated before anything is written
    decoders = [name for name in SEARCH_GRAPHS if name in src.files]
    current = [src.says_once(src.search_graph(name)) for name in decoders]  # also made from these decoder bytes
    if src.meta["format_version"] == FORMAT_VERSION and all(current):
        raise FatalError(f"{source}: format {FORMAT_VERSION} with its search graphs already: nothing to upgrade")
    target = Path(out_dir)
    _prepare_target(target, overwrite)
    with temp_dir_beside(target) as tmp:
        meta = copy.deepcopy(src.meta)
        for name in (ENCODER, *decoders, *src.data_files):
            (tmp / name).write_bytes(src.files[name])
        for name in SEARCH_GRAPHS.values():
            meta["files"].pop(name, None)  # stale ones are made anew
        upgrade = {
            "from_format": src.meta["format_version"],
            "added": "search graphs",
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "capcli": __version__,
            **({"command": command} if command else {}),
        }
        meta.setdefault("provenance", {})["upgrade"] = upgrade
        add_search_graphs(tmp, meta)
        write_meta(tmp, meta)
        upgrade["search_parity"] = compare_searches(tmp, images)
        if not all(check["same"] == check["captions"] for check in upgrade["search_parity"]["checks"]):
            raise ParityError(f"a search graph's captions differ from the numpy search's: {upgrade['search_parity']}")
        write_meta(tmp, meta)
        move_into_place(tmp, target)
    return target


def compare_searches(folder: Path, images: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    """How many captions (and scores) the bundle's search graphs give as the numpy search does, per decoder
    precision and beam width under capcli's default rules (beam 3 also with ``--repeated-words``), on up to 3
    check images."""
    from capcli.runtime import Captioner

    bundle = load_bundle(folder)
    pixels, inputs = check_pixels(images, bundle.preprocess, COMPARE_IMAGES, COMPARE_IMAGES)
    checks = []
    for precision in ("float", "int8") if bundle.has_int8_decoder else ("float",):
        for beam, once in ((1, True), (3, True), (3, False)):
            decoding = Decoding(beam, no_repeated_words=once)
            found = [
                [
                    (c.tokens, c.score)
                    for c in Captioner(
                        bundle, "cpu", lanes=1, precision=precision, decoding=decoding, search=search
                    ).caption(pixels)
                ]
                for search in ("numpy", "graph")
            ]
            same = sum(a == b for a, b in zip(*found))
            checks.append(
                {"precision": precision, "beam": beam, "no_repeated_words": once, "captions": len(pixels), "same": same}
            )
    return {"inputs": inputs, "checks": checks}


def _old_meta(folder: Path) -> dict[str, Any]:
    meta = read_meta_json(folder / MODEL_JSON)
    version = meta.get("format_version")
    if version != OLD_VERSION:
        raise FatalError(f"{folder}: format_version {version!r}: only format {OLD_VERSION} bundles need --upgrade")
    if meta.get("quantized"):
        raise FatalError(f"{folder}: an int8 bundle: upgrade the float bundle it came from, with --quantize")
    if not isinstance(meta.get("model_config"), dict):
        raise FatalError(f"{folder}: model.json has no model_config to rebuild the decoder from")
    return meta


def _transpose_keys(encoder: bytes) -> bytes:
    """The old encoder graph with its keys output (B, L, A) transposed to (B, A, L)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(encoder)
    graph = model.graph
    (producer,) = [node for node in graph.node if "keys" in node.output]
    regions_first = "keys_regions_first"
    producer.output[list(producer.output).index("keys")] = regions_first
    graph.node.append(helper.make_node("Transpose", [regions_first], ["keys"], perm=[0, 2, 1], name="keys_to_AL"))
    return model.SerializeToString()


def _decoder_from_graph(decoder: bytes, cfg: ModelConfig) -> Decoder:
    """The PyTorch decoder whose step the old decoder.onnx computes, weights copied from its initializers."""
    import onnx
    from onnx import numpy_helper

    weights = {init.name: numpy_helper.to_array(init) for init in onnx.load_from_string(decoder).graph.initializer}
    state = {name.removeprefix("decoder."): w for name, w in weights.items() if name.startswith("decoder.")}
    # nn.Linear(A, 1) was exported as a MatMul with its weight transposed, under a generated name.
    unnamed = [w for name, w in weights.items() if not name.startswith("decoder.")]
    (score,) = [w for w in unnamed if w.shape == (cfg.attention_dim, 1)]
    state["attention.score.weight"] = score.T
    module = Decoder(cfg)
    tensors = {name: torch.from_numpy(np.array(w)) for name, w in state.items()}
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    per_image = {name for name in missing if name.startswith(("keys.", "init_state."))}  # in encoder.onnx, not the step
    if unexpected or set(missing) != per_image:
        raise FatalError(
            f"decoder.onnx is not a capcli 0.1 decoder step (missing {sorted(set(missing) - per_image)}, "
            f"unexpected {sorted(unexpected)})"
        )
    return module.eval()


def compare_with_old(
    old_files: dict[str, bytes], new_folder: Path, images: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, Any]:
    """Largest differences between the old graphs and the bundle at ``new_folder``, per tensor."""
    import onnxruntime as ort

    from capcli.runtime import Captioner

    bundle = load_bundle(new_folder)
    new = Captioner(bundle, device="cpu", beam=1, lanes=1, precision="float")
    old_encoder, old_decoder = (
        ort.InferenceSession(old_files[n], providers=["CPUExecutionProvider"]) for n in (ENCODER, DECODER)
    )
    pixels, inputs = check_pixels(images, bundle.preprocess, COMPARE_IMAGES, COMPARE_IMAGES)
    diffs: dict[str, float] = {}

    def note(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
        diffs[name] = max(diffs.get(name, 0.0), float(np.abs(ours - theirs).max()))

    names = bundle.state_names
    old_out = dict(zip([o.name for o in old_encoder.get_outputs()], old_encoder.run(None, {"image": pixels})))
    encoded = new.encode(pixels)
    note("features", encoded["features"], old_out["features"])
    note("keys", encoded["keys"], old_out["keys"].transpose(0, 2, 1))
    r = ROWS_PER_IMAGE
    old_context = {name: np.repeat(old_out[name], r, axis=0) for name in ("features", "keys")}  # per row
    old_state = new_state = {name: np.repeat(encoded[name], r, axis=0) for name in names}
    context = new.bind_context(encoded)
    tokens = np.full(len(pixels) * r, bundle.vocab.start_id, dtype=np.int64)
    tokens[1::r] = 4 % len(bundle.vocab)  # the rows of an image differ
    old_names = [o.name for o in old_decoder.get_outputs()]
    for _ in range(STEPS):
        old_step = dict(zip(old_names, old_decoder.run(None, {"token": tokens, **old_state, **old_context})))
        logprobs, new_state, alpha = new.step(tokens, new_state, context)
        note("logprobs", logprobs, old_step["logprobs"])
        note("alpha", alpha, old_step["alpha"])
        for name in names:
            note(f"{name}_out", new_state[name], old_step[f"{name}_out"])
        old_state = {name: old_step[f"{name}_out"] for name in names}
        tokens = logprobs.argmax(axis=1).astype(np.int64)  # the same tokens for both sides
    return {"inputs": inputs, "steps": STEPS, "rows_per_image": r, "max_abs_diff": diffs}
