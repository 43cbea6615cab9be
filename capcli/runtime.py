"""onnxruntime sessions for a bundle: providers, ``encode()``, ``step()``, ``caption()``.

Layers, bottom up: :meth:`Captioner.encode` runs encoder.onnx once per image;
:meth:`Captioner.step` runs one decoder step over the ``N`` rows of ``M``
images (each image's context is bound once, however many rows read it);
:meth:`Captioner.caption` hands the step to the numpy search in
:mod:`capcli.decode`, binding the context of the images still searching --
or, with ``search="graph"``, runs the bundle's search graph instead: the
whole decode loop in one onnxruntime call per batch, the same captions (see
:mod:`capcli.graph_search`; ``"auto"`` takes it only where it was measured
faster, and never for options it does not implement).

Providers: ``device="auto"`` uses CUDA when onnxruntime offers it *and* it
really initialises (onnxruntime silently falls back to the CPU when a CUDA
library is missing, so the session's providers are checked after creation),
else the CPU; ``"cuda"``/``"cuda:N"`` insists and fails with the reason
onnxruntime logged; ``"cpu"`` never tries CUDA.  Under CUDA each image's
context (features, attention keys) is uploaded once per batch (and again, for
the images still searching, when some finish) and bound to every step with
IOBinding; the small recurrent state travels with the step because the beam
search reorders it on the host.  With the search graph the encoder's outputs
stay on the GPU where the graph reads them: a batch's images go up once and
only its captions come back.  The images go up as uint8 pixels, a quarter of
the float input, and the encoder normalises them itself, bit for bit as the
reader does on the CPU (:mod:`capcli.pixel_input`; :attr:`Captioner.takes_pixels`).

Precision: on the CPU the decoder step is mostly matrix products, which run
2-3x faster in int8 (the whole step about 1.6x), so ``precision="auto"``
uses the bundle's ``decoder.int8.onnx`` there when it has one that scales
each row's activations on its own (see :func:`int8_by_default`; its
dev-split cost is measured in model.json); under CUDA, and with ``"float"``,
the float decoder.  ``"float16"`` runs the encoder in float16 arithmetic
(converted in memory, :mod:`capcli.float16`) with the float decoder: meant
for CUDA; ``"auto"`` keeps the float encoder until it is measured there.

A photo's caption and score do not depend on the photos batched with it:
the float graphs and the per-row int8 decoder compute each row alone, and a
lone image is encoded as a pair (see :meth:`Captioner.encode`).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from capcli.bundle import DECODER, ENCODER, INT8_DECODER, PRECISIONS, SEARCH_MODES, Bundle
from capcli.decode import NO_REPEAT_NGRAM, Decoding, Hypothesis, State, search
from capcli.device import parse_device
from capcli.errors import FatalError
from capcli.float16 import float16_encoder
from capcli.graph_search import GRAPH_BY_DEFAULT, hypotheses, search_feeds, search_session
from capcli.images import normalise
from capcli.pixel_input import PIXELS, pixel_input_encoder
from capcli.text import detokenize

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
ENCODE_CHUNK = 16  # images per encoder run on the CPU (see Captioner.encode)
Context = dict[str, Any]  # the bundle's context_names as numpy arrays (CPU) or OrtValues on the GPU


@dataclass
class Caption:
    text: str  # rendered sentence: "A dog runs through the grass."
    tokens: list[str]  # the words, no special tokens
    score: float  # length-normalised log-probability (see capcli.decode)
    alphas: np.ndarray | None  # (T, gh, gw) attention behind each word of the chosen hypothesis
    tags: list[tuple[str, float]] | None = None  # the tagger's top classes (label, probability), when asked
    n_best: list[tuple[str, float]] | None = None  # (text, score) of the beam's best, best first, when several asked


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads slow ORT's CPU kernels down)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return allowed
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[^\n]*\n(?:[^\n]+\n)*?core id\s*:\s*(\d+)", text))
    return max(1, min(allowed, len(cores))) if cores else allowed


class Captioner:
    """Caption preprocessed images with a bundle on onnxruntime.

    ``decoding`` holds every search option (:class:`capcli.decode.Decoding`); without it,
    ``beam`` .. ``allow_dangling_end`` make one (they are not read when it is given).
    ``spec.graph_compatible`` says whether the search keeps to capcli's standard rules.
    ``pixel_input``: whether the encoder takes uint8 pixels and normalises them itself
    (:mod:`capcli.pixel_input`); None: under CUDA, where the onnx package is installed.
    """

    takes_indices = True  # caption() takes each image's index in the input (seeded sampling draws by it)

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        beam: int = 3,
        max_len: int | None = None,
        length_penalty: float = 0.7,
        no_repeat_ngram: int = NO_REPEAT_NGRAM,
        allow_dangling_end: bool = False,
        threads: int | None = None,
        lanes: int | None = None,
        precision: str = "auto",
        tags: int = 0,
        decoding: Decoding | None = None,
        search: str = "auto",
        pixel_input: bool | None = None,
    ) -> None:
        # Bad values raise UsageError (a ValueError) before anything is loaded.
        decoding = decoding or Decoding(
            beam, max_len, length_penalty, no_repeat_ngram=no_repeat_ngram, allow_dangling_end=allow_dangling_end
        )
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if precision == "int8" and not bundle.has_int8_decoder:
            raise FatalError(
                f"--precision int8: the bundle {bundle.path} has no {INT8_DECODER} "
                "(`capcli export BUNDLE -o OUT --quantize` adds one)"
            )
        if tags and not bundle.has_tags:
            raise FatalError(
                f"--tags: the model {bundle.path} has no tagger (bundles exported from a model "
                "with a tagger have one, as the shipped model does)"
            )
        self.tags = tags
        self.bundle = bundle
        self.encoder_precision = "float16" if precision == "float16" else "float"  # the encoder's arithmetic
        self.decoding = decoding
        self.beam = decoding.beam
        # UsageError: a prefix word the model lacks, a phrasing rule without a table
        self.spec = decoding.spec(bundle.vocab, bundle.max_len, bundle.trigrams)
        kind, device_id = parse_device(device)
        self.cuda_problem: str | None = None  # why CUDA is not used, when it was tried
        self.threads: int | None = None  # onnxruntime intra-op threads on the CPU; None under CUDA
        # Batches the pipeline captions concurrently, each run on its own calling thread (default 2,
        # sharing the physical cores on the CPU).  On the CPU two lanes beat one session with twice
        # the threads: the decode loop's small steps and its numpy bookkeeping leave a core idle that
        # the other lane's encoder fills.  Under CUDA the decode loop's Python side is the bottleneck;
        # a second lane overlaps it with the other batch's GPU work (H100, 3,000 photos, two runs each:
        # beam 3 about 296 -> 341 images/s, greedy about the same).
        self.lanes = lanes or 2
        self._cuda_id: int | None = None
        # Converted once: a failed CUDA start falls back to the CPU with the same graph.
        encoder_graph = (
            bundle.files[ENCODER] if self.encoder_precision == "float" else float16_encoder(bundle.files[ENCODER])
        )
        if kind in ("auto", "cuda") and CUDA in ort.get_available_providers():
            sessions, problem = _cuda_sessions(
                bundle, device_id, lambda: _with_pixel_input(encoder_graph, bundle, pixel_input)
            )
            if sessions is not None:
                self._encoder, self._decoder = sessions
                self._cuda_id = device_id
            else:
                self.cuda_problem = problem
        elif kind == "cuda":
            self.cuda_problem = (
                f"this onnxruntime build has no CUDA provider (it offers {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu"
            )
        if self._cuda_id is not None and precision == "int8":
            raise FatalError(f"--precision int8 runs on the CPU only (use --device cpu, or float on {device})")
        self.precision = "float"  # the decoder in use
        if self._cuda_id is None:
            if kind == "cuda":
                raise FatalError(f"--device {device}: CUDA is not usable: {self.cuda_problem}")
            cores = physical_cores()
            self.lanes = lanes or min(2, cores)
            self.threads = threads or max(1, cores // self.lanes)
            options = _session_options(self.threads)
            int8 = precision == "int8" or (precision == "auto" and int8_by_default(bundle))
            self.precision = "int8" if int8 else "float"
            decoder = INT8_DECODER if int8 else DECODER
            cpu_graph = _with_pixel_input(encoder_graph, bundle, True) if pixel_input else encoder_graph
            self._encoder = ort.InferenceSession(cpu_graph, options, providers=[CPU])
            self._decoder = ort.InferenceSession(bundle.files[decoder], options, providers=[CPU])
        self.providers: list[str] = self._encoder.get_providers()
        # Whether caption() and encode() take (B, H, W, 3) uint8 pixels straight to the encoder (they
        # always accept them; float32 (B, 3, H, W) only when this is False).
        self.takes_pixels = self._encoder.get_inputs()[0].name == PIXELS
        # Where bind_context() uploads each image's context for the decoder steps to bind (IOBinding):
        # the GPU under CUDA; None on the CPU, where plain runs read the numpy arrays in place.
        self._context_memory: tuple[str, int] | None = None if self._cuda_id is None else ("cuda", self._cuda_id)
        self._search = self._search_graph(search)  # None: the numpy loop
        self._encoder_outputs = [o.name for o in self._encoder.get_outputs()]
        self._decoder_outputs = [o.name for o in self._decoder.get_outputs()]
        self.seconds = {"encode": 0.0, "decode": 0.0}  # time spent in caption() per stage, summed over lanes
        self._seconds_lock = threading.Lock()
        self._run_options = ort.RunOptions()  # every run's: cancel() sets its terminate flag

    def _search_graph(self, search: str) -> ort.InferenceSession | None:
        """The session of the bundle's search graph over the decoder in use, when ``search`` takes it."""
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {', '.join(SEARCH_MODES)}")
        decoder = INT8_DECODER if self.precision == "int8" else DECODER
        graph = self.bundle.search_graph(decoder)
        # The graph's n-gram rule is built in: the one the spec's standard rules name, unless made otherwise.
        # Graphs written before the rule of words said once have no input for it: only without that rule.
        ngram = self.bundle.meta.get("search", {}).get(graph, {}).get("no_repeat_ngram")
        self._graph_says_once = self.bundle.says_once(graph)
        usable = (
            graph is not None
            and self.spec.graph_compatible
            and ngram == self.spec.no_repeat_ngram
            and (self._graph_says_once or not self.spec.say_once)
        )
        if search == "graph" and not usable:
            if graph is None:
                why = f"the bundle {self.bundle.path} has no search graph over its {decoder}"
                why += " (`capcli export BUNDLE -o NEW --upgrade` adds them)"
            elif self.spec.say_once and not self._graph_says_once:
                why = f"the bundle {self.bundle.path}'s search graph predates the rule of words said once"
                why += " (`capcli export BUNDLE -o NEW --upgrade` writes it anew; --repeated-words uses it as it is)"
            else:
                why = "these decoding options need the numpy search (it implements only the standard rules)"
            raise FatalError(f"--search graph: {why}")
        kind = "cpu" if self._cuda_id is None else "cuda"
        if graph is None or not (search == "graph" or (search == "auto" and usable and GRAPH_BY_DEFAULT[kind])):
            return None
        if self._cuda_id is None:
            return search_session(self.bundle.files[graph], self.bundle.path, _session_options(self.threads), [CPU])
        return search_session(
            self.bundle.files[graph], self.bundle.path, _session_options(None), _cuda_providers(self._cuda_id)
        )

    @property
    def search(self) -> str:
        """The search in use: "graph" (the bundle's search graph) or "numpy"."""
        return "numpy" if self._search is None else "graph"

    def cancel(self) -> None:
        """End every encoder and decoder run now and refuse new ones (they raise); the captioner is spent.

        For a second Ctrl-C: onnxruntime checks the flag between graph nodes, so a big batch stops at once.
        """
        self._run_options.terminate = True

    @property
    def device(self) -> str:
        """Where the model runs: "cuda:N" or "cpu"."""
        return f"cuda:{self._cuda_id}" if self._cuda_id is not None else "cpu"

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Images (B, H, W, 3) uint8 pixels, or (B, 3, H, W) float32 normalised unless :attr:`takes_pixels`
        -> {"features" (B, L, D), "keys" (B, A, L), "h" (B, H)[, "c"][, "concept" (B, C)][, "tags" (B, K)]}."""
        [(name, x)] = self._encoder_feed(images).items()
        if self._cuda_id is None and len(x) > ENCODE_CHUNK:
            # On the CPU a big batch's early convolutions take up to a second each, and cancel() is
            # seen only between graph nodes: chunks keep a second Ctrl-C prompt at no cost in speed.
            parts = [self._encode(name, x[i : i + ENCODE_CHUNK]) for i in range(0, len(x), ENCODE_CHUNK)]
            return {output: np.concatenate([part[output] for part in parts]) for output in parts[0]}
        return self._encode(name, x)

    def _encode(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        if len(x) == 1:
            # onnxruntime's ReduceMean (the initial state's mean over regions) sums a batch of one in
            # another order than a bigger batch, which moves h by ~1e-7, enough to flip a score's last
            # printed digit.  Every batch of two or more gives each image the same bits, so a lone image
            # is encoded as a pair: a photo's record does not depend on the batch it came in.
            outputs = self._encoder.run(self._encoder_outputs, {name: np.concatenate([x, x])}, self._run_options)
            return {output: value[:1] for output, value in zip(self._encoder_outputs, outputs)}
        outputs = self._encoder.run(self._encoder_outputs, {name: x}, self._run_options)
        return dict(zip(self._encoder_outputs, outputs))

    def bind_context(self, encoded: dict[str, np.ndarray], images: np.ndarray | None = None) -> Context:
        """The features (M, L, D) and keys (M, A, L) of ``images`` (default: all), ready for :meth:`step`."""
        context = {
            name: encoded[name] if images is None else encoded[name][images] for name in self.bundle.context_names
        }
        if self._context_memory is not None:  # upload once; every step binds the same device buffers
            return {name: ort.OrtValue.ortvalue_from_numpy(v, *self._context_memory) for name, v in context.items()}
        return context

    def step(self, tokens: np.ndarray, state: State, context: Context) -> tuple[np.ndarray, State, np.ndarray]:
        """One decoder step over the N rows of the M images of ``context`` (image-major, N / M rows each).

        Returns (logprobs (N, V), new state, alpha (N, L)).
        """
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        outputs = self._run(self._decoder, self._decoder_outputs, {"token": tokens, **state, **context})
        out = dict(zip(self._decoder_outputs, outputs))
        new_state = {name: out[f"{name}_out"] for name in self.bundle.state_names}
        return out["logprobs"], new_state, out["alpha"]

    def caption(self, images: np.ndarray, indices: Sequence[int] | None = None) -> list[Caption]:
        """Images (B, H, W, 3) uint8 pixels or (B, 3, H, W) float32, as :meth:`encode` takes them -> B captions
        (with the tagger's top ``tags`` classes when the captioner was made with ``tags``).

        ``indices``: each image's index in the input (default 0..B-1); sampling draws image i's
        words from (seed, indices[i]), so its caption does not depend on the batch.
        """
        if len(images) == 0:
            return []
        started = time.perf_counter()
        if self._search is not None and self._context_memory is not None:
            encoded: dict[str, Any] = self.encode_in_place(images)
        else:
            encoded = self.encode(images)
        encoded_at = time.perf_counter()
        if self._search is not None:  # [:B]: a lone image was searched as a pair (see encode_in_place)
            captions = [self._to_caption([found]) for found in self._graph_search(encoded)][: len(images)]
        else:
            state = {name: encoded[name] for name in self.bundle.state_names}
            captions = self._numpy_search(encoded, state, indices)
        if self.tags:
            tags = encoded["tags"]
            for caption, probs in zip(captions, tags.numpy() if isinstance(tags, ort.OrtValue) else tags):
                caption.tags = top_tags(probs, self.bundle.tag_labels, self.tags)
        with self._seconds_lock:
            self.seconds["encode"] += encoded_at - started
            self.seconds["decode"] += time.perf_counter() - encoded_at
        return captions

    def encode_in_place(self, images: np.ndarray) -> dict[str, ort.OrtValue]:
        """:meth:`encode` with its outputs left on the GPU (CUDA only), where the search graph reads them: the
        images go up once, and only the captions come back.  A lone image is encoded as a pair, as
        :meth:`encode` does, so the outputs hold two rows then."""
        if self._context_memory is None:
            raise ValueError("encode_in_place() is for a captioner on CUDA")
        [(name, x)] = self._encoder_feed(images).items()
        binding = self._encoder.io_binding()
        binding.bind_cpu_input(name, np.concatenate([x, x]) if len(x) == 1 else x)
        for output in self._encoder_outputs:
            binding.bind_output(output, *self._context_memory)
        self._encoder.run_with_iobinding(binding, self._run_options)
        return dict(zip(self._encoder_outputs, binding.get_outputs()))

    def _graph_search(self, encoded: dict[str, Any]) -> list[Hypothesis]:
        """One run of the search graph over the batch's encoder outputs (numpy arrays, or OrtValues where
        they were left)."""
        assert self._search is not None
        feeds = {name: encoded[name] for name in (*self.bundle.context_names, *self.bundle.state_names)}
        feeds.update(search_feeds(self.spec, self.beam, len(self.bundle.vocab), self._graph_says_once))
        ids, _, scores, finished = self._run(self._search, [o.name for o in self._search.get_outputs()], feeds)
        return hypotheses(ids, scores, finished)

    def _run(self, session: ort.InferenceSession, outputs: list[str], feeds: dict[str, Any]) -> list[np.ndarray]:
        """``session``'s ``outputs`` on the host.  Feeds that are OrtValues (buffers already on the device)
        are bound where they are, numpy arrays are copied in; without OrtValues, a plain run."""
        if not any(isinstance(value, ort.OrtValue) for value in feeds.values()):
            return session.run(outputs, feeds, self._run_options)
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.asarray(value, order="C"))  # ascontiguousarray makes 0-d 1-d
        for name in outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding, self._run_options)
        return binding.copy_outputs_to_cpu()

    def _numpy_search(
        self, encoded: dict[str, np.ndarray], state: State, indices: Sequence[int] | None
    ) -> list[Caption]:
        """The numpy search (capcli.decode) over :meth:`step`, binding the context of the images still searching."""
        bound: list[Any] = [-1, None]  # (image count, context of those images)
        count = len(next(iter(state.values())))

        def step(tokens: np.ndarray, st: State, which: np.ndarray) -> tuple[np.ndarray, State, np.ndarray]:
            # Finished images leave the search; the set only shrinks, so a new count is a new set.
            if bound[0] != len(which):
                bound[:] = len(which), self.bind_context(encoded, None if len(which) == count else which)
            return self.step(tokens, st, bound[1])

        keys = range(count) if indices is None else indices
        return [self._to_caption(found) for found in search(step, state, self.spec, self.beam, keys)]

    def _to_caption(self, found: list[Hypothesis]) -> Caption:
        """The caption of an image's best hypothesis; with the others' texts when several were asked for."""
        hyp, tokens = found[0], self.bundle.vocab.tokens
        words = [tokens[i] for i in hyp.ids]
        gh, gw = self.bundle.grid
        alphas = None if hyp.alphas is None else hyp.alphas.reshape(len(words), gh, gw)  # None: the search graph's
        caption = Caption(detokenize(words), words, hyp.score, alphas)
        if self.spec.n_best > 1:
            caption.n_best = [(detokenize([tokens[i] for i in h.ids]), h.score) for h in found]
        return caption

    def _encoder_feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The encoder's input: pixels (B, H, W, 3) uint8 as they are, or normalised here for an encoder
        that takes float32 (B, 3, H, W), which it also takes ready-made."""
        pre = self.bundle.preprocess
        h, w = pre.size
        if images.ndim == 4 and images.shape[1:] == (h, w, 3) and images.dtype == np.uint8:
            if self.takes_pixels:
                return {PIXELS: np.ascontiguousarray(images)}
            return {"image": normalise(images, pre)}
        if images.ndim == 4 and images.shape[1:] == (3, h, w) and not self.takes_pixels:
            return {"image": np.ascontiguousarray(images, dtype=np.float32)}
        also = "" if self.takes_pixels else f", or (B, 3, {h}, {w}) float32 normalised"
        raise ValueError(f"images must be (B, {h}, {w}, 3) uint8 pixels{also}; got {images.shape} {images.dtype}")


def int8_by_default(bundle: Bundle) -> bool:
    """Whether ``precision="auto"`` takes the bundle's int8 decoder on the CPU.

    Only one that quantises each row's activations on its own (``capcli export --quantize`` since
    issue 19 records ``activation_scale: per-row``): with one scale per batch, a photo's caption and
    score depended on the photos captioned beside it.  An older int8 decoder is used with
    ``--precision int8`` only (re-quantise the bundle to make it the default again).
    """
    quantization = bundle.provenance.get("quantization")
    return (
        bundle.has_int8_decoder and isinstance(quantization, dict) and quantization.get("activation_scale") == "per-row"
    )


def top_tags(probs: np.ndarray, labels: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable classes of one image's probabilities (K,), best first (ties: lower index)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]


def _session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: per-node placement warnings are noise here
    return options


def _cuda_providers(device_id: int) -> list[Any]:
    # cuDNN's exhaustive algorithm search (onnxruntime's default) finds no algorithm for several of the
    # EfficientNet convolutions within its workspace and runs them in "fallback mode": 20x slower on an
    # H100 (160 vs 3,000 images/s for the shipped encoder).  The heuristic choice is as fast here.
    return [(CUDA, {"device_id": device_id, "cudnn_conv_algo_search": "HEURISTIC"}), CPU]


def _cuda_sessions(
    bundle: Bundle, device_id: int, encoder_graph: Callable[[], bytes]
) -> tuple[tuple[ort.InferenceSession, ort.InferenceSession] | None, str]:
    """Sessions of the float decoder and ``encoder_graph()`` on CUDA, or (None, the reason onnxruntime gave
    for falling back).  The decoder comes first: the encoder's graph is made only once CUDA works."""
    providers = _cuda_providers(device_id)
    encoder = None
    with _native_stderr() as log:  # what onnxruntime logs is read when the block ends
        _preload_cuda_libraries()
        try:
            decoder = ort.InferenceSession(bundle.files[DECODER], _session_options(None), providers=providers)
            if decoder.get_providers()[0] == CUDA:
                encoder = ort.InferenceSession(encoder_graph(), _session_options(None), providers=providers)
        except FatalError:
            raise  # the encoder's graph could not be made: not a CUDA problem
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare RuntimeError/Fail
            return None, f"creating a CUDA session failed: {exc}"
    if encoder is not None and encoder.get_providers()[0] == CUDA:
        return (encoder, decoder), ""
    return None, _cuda_reason(log.getvalue())


def _with_pixel_input(graph: bytes, bundle: Bundle, wanted: bool | None) -> bytes:
    """``graph`` taking uint8 pixels (:mod:`capcli.pixel_input`): when ``wanted``, or with None where the
    onnx package is installed."""
    rewritten = None if wanted is False else pixel_input_encoder(graph, bundle.preprocess)
    if rewritten is None and wanted:
        raise FatalError("an encoder taking pixels is made with the onnx package: pip install onnx")
    return graph if rewritten is None else rewritten


def _cuda_reason(log: str) -> str:
    """The useful line of onnxruntime's log about a CUDA provider that did not load."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    missing = re.search(r"with error: (\S+: cannot open shared object file[^\n]*)", text)
    if missing and missing.group(1).startswith("libcuda.so"):
        return f"no NVIDIA driver: {missing.group(1).strip()}"
    if missing:
        return f"a library is missing: {missing.group(1).strip()} (install CUDA 13 and cuDNN 9, or use --device cpu)"
    lines = [re.sub(r"^.*?\] ", "", line).strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "onnxruntime fell back to the CPU without saying why"


def _preload_cuda_libraries() -> None:
    """Let onnxruntime find CUDA/cuDNN installed as pip packages (nvidia-*); quiet, best effort."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()):  # it prints warnings to stdout, where records go
        try:
            preload()
        except Exception:  # noqa: BLE001 - missing optional libraries surface at session creation
            pass


@contextlib.contextmanager
def _native_stderr() -> Iterator[io.StringIO]:
    """Capture what native code writes to file descriptor 2 (onnxruntime's default logger).

    Meant for start-up, before worker threads write to stderr.
    """
    captured = io.StringIO()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): don't capture
        yield captured
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.write(tmp.read().decode("utf-8", "replace"))
