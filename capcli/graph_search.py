"""Run a bundle's search graph (``search.onnx`` / ``search.int8.onnx``, see :mod:`capcli.export.search_graph`).

The graph runs the whole decode loop of a batch in one onnxruntime call,
with the rules of :mod:`capcli.decode`'s beam search (beam width 1 is its
greedy search) for the specs that keep to the standard rules
(``SearchSpec.graph_compatible``); :func:`search_feeds` turns a spec into the graph's inputs (the
length normalisers computed with the numpy search's own expressions, so
the scores are the same bits); :func:`hypotheses` reads its outputs.  No
attention maps come out: runs that write them keep the numpy loop.

The graph's weights are external data in the bundle's decoder file, so the
session is made from the checked bytes with the bundle's folder as the
place to read them from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from capcli.decode import Hypothesis, SearchSpec

# Where search="auto" takes the graph: only where it was measured faster than the numpy loop
# (docs/performance.md).  CPU: not faster (capcli bench --search both, int8, 2 loaded cores: beam 3
# 0.90x, greedy 1.02x the numpy loop), so the numpy loop stays; CUDA: not measured yet (no GPU in the
# session that wrote the graphs: run the same bench with --device cuda, then set it).
GRAPH_BY_DEFAULT = {"cpu": False, "cuda": False}
_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def search_session(
    data: bytes, folder: Path, options: ort.SessionOptions, providers: list[Any]
) -> ort.InferenceSession:
    """A session for the search graph ``data``, its weights read from the decoder file in ``folder``."""
    options.add_session_config_entry(_FOLDER_KEY, str(folder))
    return ort.InferenceSession(data, options, providers=providers)


def search_feeds(spec: SearchSpec, beam: int, vocab_size: int, say_once: bool = True) -> dict[str, np.ndarray]:
    """The graph's search inputs for ``spec`` (the per-image context and state come from the encoder);
    ``say_once``: the graph takes the mask of words said once (graphs written before that rule do not)."""
    banned = np.zeros(vocab_size, dtype=bool)
    banned[list(spec.banned)] = True
    dangling = np.zeros(vocab_size, dtype=bool)
    dangling[list(spec.no_end_after)] = True
    steps = range(spec.max_len + 1)
    # The numpy searches' own expressions, one scalar at a time, give their very divisors: beam search
    # divides an ended score by float((t + 1) ** lp), greedy search (beam 1) every score, and beam search
    # a partial one, by spec.normalise's np.maximum(length, 1) ** lp -- numpy's power, which differs from
    # Python's in the last bit for some lengths (13, 15 and 17 at lp 0.7).
    lp = spec.length_penalty
    end_norm = np.array([np.maximum(t + 1, 1) ** lp if beam == 1 else float((t + 1) ** lp) for t in steps])
    partial_norm = np.array([np.maximum(t, 1) ** lp for t in steps], dtype=np.float64)
    scalars = {
        "beam": beam,
        "max_len": spec.max_len,
        "min_len": spec.min_len,
        "start_id": spec.start_id,
        "end_id": spec.end_id,
    }
    return {
        **{name: np.array(value, dtype=np.int64) for name, value in scalars.items()},
        "banned": banned,
        "dangling": dangling,
        **({"say_once": spec.said_once_mask(vocab_size)} if say_once else {}),
        "end_norm": end_norm,
        "partial_norm": partial_norm,
    }


def hypotheses(ids: np.ndarray, scores: np.ndarray, finished: np.ndarray) -> list[Hypothesis]:
    """The graph's outputs (ids (B, W), -1 after each caption; scores (B,); finished (B,)) as hypotheses
    without attention maps."""
    return [
        Hypothesis(row[row >= 0].tolist(), float(score), None, bool(done))  # type: ignore[arg-type]
        for row, score, done in zip(ids, scores, finished)
    ]
