"""Batched greedy and beam search over a one-step decoder, in numpy.

The step function sees the ``N`` rows of the ``M`` images still searching::

    step(tokens int64 (N,), state {name: (N, ...)}, images int (M,)) -> (logprobs (N, V), new state, alpha (N, L))

``images`` are their indices in the batch (ascending), so the caller binds
the matching per-image context (features, attention keys); rows are
image-major, ``R = N / M`` rows per image (1 for greedy; the beam width ``K``,
except at the first step, where an image's K rows would be identical and one
is computed).  Only the recurrent state is reordered here, by integer
back-pointers.  Finished captions (greedy) and finished images (beam) leave
the batch: their rows are not computed again.  The search writes into the
``logprobs`` the step returns (forbidden words become -inf): return a fresh array.

Rules shared by both searches (so that beam 1 is exactly greedy):

- ``banned`` ids (the specials <pad>, <start>, <unk>) are never produced;
- <end> cannot come before ``min_len`` words (at least one: a caption has a
  word), and after ``max_len`` words only <end> may follow;
- the ``prefix`` words, when given, are forced first (no other rule blocks
  them), then the search goes on for at least one more word (unless
  ``max_len`` is reached); their log-probabilities count in the score;
- <end> cannot follow a word of ``no_end_after`` (the runtime passes articles,
  prepositions and the like: "a dog runs in the" is not a caption), except
  after ``max_len`` words;
- a word of ``say_once`` (the runtime passes every word but the articles,
  prepositions, pronouns and the like of :data:`REPEATABLE_WORDS`; ``--repeated-words``
  passes none) comes at most once in a caption: "a plate of food on a plate" is not one
  (a prefix may say a word twice; the words after it keep to the rule);
- a ``phrasing`` rule (``--unseen-trigram-penalty``, :class:`capcli.phrasing.PhraseRule`) takes its weight
  off each word, after the prefix, that would make a trigram no training sentence has with the row's two
  last words (<start> before the first); the score keeps the penalty;
- a hypothesis is ranked by its length-normalised score
  ``sum(log p) / len ** length_penalty`` where ``len`` counts the words plus
  the <end> token (the simple "len^alpha" rule, not GNMT's ``((5+len)/6)^alpha``);
  ``length_penalty=0`` ranks by the raw sum;
- a hypothesis that can never end (its <end> probability is 0) is returned
  as the best *partial* caption, marked ``finished=False``, instead of failing.

:func:`sample` draws each word instead (``SearchSpec.sampling``), under the
same rules, one row per image; image ``i`` draws from its own random stream,
seeded by ``(seed, keys[i])``, so a caption depends on its key (the runtime
passes the input's index) and never on the batch.  :func:`search` picks
greedy, beam or sampling for a spec; :class:`Decoding` holds the user's
options without a vocabulary (the CLI, ``capcli.load`` and ``capcli eval``
build one) and turns into a model's :class:`SearchSpec`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from capcli.errors import UsageError
from capcli.phrasing import PhraseRule, last_two
from capcli.text import tokenize

if TYPE_CHECKING:
    from capcli.text import Vocab

State = dict[str, np.ndarray]
# The decoder's recurrent state by decoder kind: the names of the state inputs/outputs of
# decoder.onnx and of the State dicts here (bundle, export and training all read state_names).
STATE_NAMES: dict[str, tuple[str, ...]] = {"gru": ("h",), "lstm": ("h", "c")}
CONCEPT_WEIGHT = "concept_weight"  # a two-view decoder's (N, 1) weight of its concept-only view


def state_names(kind: str, concept_view: bool = False) -> tuple[str, ...]:
    """The state of a ``kind`` decoder; a two-view one (``concept_view``) also carries the concept-only
    view's state (``h_concept``...) and that view's weight (see capcli.train.model.Decoder.init)."""
    own = STATE_NAMES[kind]
    return (*own, *(f"{s}_concept" for s in own), CONCEPT_WEIGHT) if concept_view else own


# The search policy the runtime captions by (and training's dev captions too):
NO_REPEAT_NGRAM = 3  # a caption never holds the same three words twice
# Words a caption may not end on (when the vocabulary has them): "a dog runs in the." is cut short.
# Models fine-tuned on CIDEr (self-critical training) learn such endings; the list is the usual one.
DANGLING_WORDS = (
    "a",
    "an",
    "the",
    "in",
    "for",
    "at",
    "of",
    "with",
    "before",
    "after",
    "on",
    "upon",
    "near",
    "to",
    "is",
    "are",
    "am",
    "and",
    "his",
    "her",
    "their",
    "its",
)


def dangling_ids(vocab: Vocab) -> tuple[int, ...]:
    """Ids of the vocabulary's :data:`DANGLING_WORDS`."""
    return tuple(i for i in vocab.encode(DANGLING_WORDS) if i != vocab.unk_id)


# Words a caption may say more than once: articles, prepositions, conjunctions, pronouns, auxiliaries and
# counts.  Any other word (a noun, a colour, a verb) it says once at most: "A plate of food on a plate."
# is not a caption a person writes.
REPEATABLE_WORDS = frozenset(
    """a an the in on of with and or is are was be being has have at to by for from into onto over under
    near next up down out off around through along behind front top side back while as that this there
    it its his her their they them he she him who one two three four some other another each s""".split()
)


def say_once_ids(vocab: Vocab) -> tuple[int, ...]:
    """Ids of the vocabulary's words a caption says at most once: all but the specials and :data:`REPEATABLE_WORDS`."""
    first = len(vocab.special_ids())
    return tuple(i for i, w in enumerate(vocab.tokens) if i >= first and w not in REPEATABLE_WORDS)


def repeated_words(words: Sequence[str]) -> list[str]:
    """The words of ``words`` that repeat one said before and are not :data:`REPEATABLE_WORDS`, in order."""
    seen: set[str] = set()
    repeats = []
    for w in words:
        if w in seen and w not in REPEATABLE_WORDS:
            repeats.append(w)
        seen.add(w)
    return repeats


StepFn = Callable[[np.ndarray, State, np.ndarray], tuple[np.ndarray, State, np.ndarray]]


@dataclass
class Hypothesis:
    ids: list[int]  # word ids: no <start>, no <end>, no banned ids
    score: float  # length-normalised log-probability (see module doc)
    alphas: np.ndarray  # (len(ids), L) attention weights that produced each word
    finished: bool  # False: best partial caption, no <end> was reachable


@dataclass(frozen=True)
class Sampling:
    """Draw each word from the model's distribution instead of searching for the likeliest caption."""

    temperature: float = 1.0  # > 0: log-probabilities are divided by it before the softmax
    top_p: float = 1.0  # nucleus: draw among the likeliest words whose probabilities sum to top_p
    seed: int = 0  # >= 0: with an image's key, the seed of that image's own random stream


@dataclass(frozen=True)
class SearchSpec:
    start_id: int
    end_id: int
    banned: Sequence[int]
    max_len: int = 20  # words, not counting <end>
    length_penalty: float = 0.7
    no_repeat_ngram: int = 0  # n > 0: a caption never holds the same n words twice
    no_end_after: Sequence[int] = ()  # word ids a caption may not end on
    say_once: Sequence[int] = ()  # word ids a caption says at most once
    min_len: int = 1  # words before <end> may come (at least 1)
    prefix: tuple[int, ...] = ()  # word ids every caption starts with (at most max_len)
    n_best: int = 1  # hypotheses beam search returns per image (at most the beam width)
    sampling: Sampling | None = None  # draw words (see :func:`sample`) instead of searching
    phrasing: PhraseRule | None = None  # a penalty on words making a trigram no training sentence has

    @classmethod
    def for_vocab(cls, vocab: Vocab, max_len: int, **rules: Any) -> SearchSpec:
        """The spec of a model's vocabulary: its <start> and <end>, its other specials banned."""
        return cls(vocab.start_id, vocab.end_id, (vocab.pad_id, vocab.start_id, vocab.unk_id), max_len, **rules)

    @classmethod
    def runtime(cls, vocab: Vocab, max_len: int, length_penalty: float = 0.7) -> SearchSpec:
        """The rules capcli captions by, a default :class:`Decoding`'s: the vocabulary's specials banned, no
        repeated :data:`NO_REPEAT_NGRAM`-grams, no caption ending on one of :data:`DANGLING_WORDS`, no word but
        :data:`REPEATABLE_WORDS` said twice."""
        return Decoding(length_penalty=length_penalty).spec(vocab, max_len)

    @property
    def graph_compatible(self) -> bool:
        """Whether this spec keeps to the standard rules of :meth:`runtime`, which a search built into an
        ONNX graph implements (:mod:`capcli.graph_search`): :data:`NO_REPEAT_NGRAM` blocking, no prefix,
        one hypothesis, no sampling, no phrasing rule (ONNX has no lookup for its table).  ``max_len``,
        ``min_len``, ``length_penalty``, ``banned`` and ``no_end_after`` are the graph's inputs, so any values go."""
        return (
            self.no_repeat_ngram == NO_REPEAT_NGRAM
            and not self.prefix
            and self.n_best == 1
            and self.sampling is None
            and self.phrasing is None
        )

    def normalise(self, logprob: np.ndarray | float, length: np.ndarray | int) -> np.ndarray | float:
        return logprob / np.maximum(length, 1) ** self.length_penalty

    def allowed(self, t: int, vocab_size: int) -> np.ndarray:
        """(V,) bool: the tokens step ``t`` may produce (no banned id; no <end> before min_len words, nor
        right after the prefix; the prefix's word while in the prefix; only <end> after max_len)."""
        ok = np.ones(vocab_size, dtype=bool)
        ok[list(self.banned)] = False
        if t < max(self.min_len, len(self.prefix) + 1):  # a prefix is followed by a word of the model's own
            ok[self.end_id] = False
        if t < len(self.prefix):
            ok[:] = False
            ok[self.prefix[t]] = True
        if t >= self.max_len:
            ok[:] = False
            ok[self.end_id] = True
        return ok

    def said_once_mask(self, vocab_size: int) -> np.ndarray:
        """(V,) bool: the words of ``say_once`` (made once per spec: every step of every batch reads it)."""
        cached = self.__dict__.get("_said_once_mask")
        if cached is None or len(cached) != vocab_size:
            cached = np.zeros(vocab_size, dtype=bool)
            cached[list(self.say_once)] = True
            object.__setattr__(self, "_said_once_mask", cached)
        return cached

    def mask(self, logprobs: np.ndarray, t: int) -> np.ndarray:
        """Log-probabilities (N, V) at step ``t`` with forbidden tokens at -inf."""
        return self.mask_inplace(logprobs.astype(np.float64, copy=True), t)

    def mask_inplace(self, scores: np.ndarray, t: int) -> np.ndarray:
        """Set the tokens forbidden at step ``t`` to -inf in ``scores`` (N, V); returns it."""
        scores[:, ~self.allowed(t, scores.shape[1])] = -np.inf
        return scores


@dataclass(frozen=True)
class Decoding:
    """How captions are searched for, without a vocabulary: the decoding options of ``capcli caption``,
    ``url-list`` and ``eval`` and of ``capcli.load``; :meth:`spec` makes a model's :class:`SearchSpec`.

    Bad values raise :class:`~capcli.errors.UsageError` (named by their command-line option).
    """

    beam: int = 3  # 1: greedy
    max_len: int | None = None  # None: the model's
    length_penalty: float = 0.7
    min_len: int = 1  # no <end> before this many words
    no_repeat_ngram: int = NO_REPEAT_NGRAM  # 0: off
    allow_dangling_end: bool = False  # let a caption end on one of DANGLING_WORDS
    no_repeated_words: bool = True  # a caption says each word but REPEATABLE_WORDS at most once
    num_captions: int = 1  # the beam's n best, each image
    sampling: Sampling | None = None
    prefix: str = ""  # words every caption starts with
    unseen_trigram_penalty: float = 0.0  # > 0: off each word making a trigram the model's training text lacks

    def __post_init__(self) -> None:
        problems = [
            (self.beam < 1, "--beam must be at least 1"),
            (self.max_len is not None and self.max_len < 1, "--max-len must be at least 1"),
            (self.length_penalty < 0, "--length-penalty must be at least 0"),
            (self.min_len < 1, "--min-len must be at least 1"),
            (self.max_len is not None and self.min_len > self.max_len, "--min-len cannot exceed --max-len"),
            (self.no_repeat_ngram < 0, "--no-repeat-ngram must be at least 0 (0: off)"),
            (self.num_captions < 1, "--num-captions must be at least 1"),
            (not self.unseen_trigram_penalty >= 0, "--unseen-trigram-penalty must be at least 0 (0: off)"),
            (
                self.num_captions > self.beam,
                (
                    f"--num-captions {self.num_captions} is more than the beam holds (--beam {self.beam}): "
                    f"the captions are the beam's best, add --beam {self.num_captions} or more"
                ),
            ),
        ]
        if self.sampling is not None:
            problems += [
                (self.num_captions > 1, "--num-captions takes the beam's best captions: it does not go with --sample"),
                (not self.sampling.temperature > 0, "--temperature must be above 0"),
                (not 0 < self.sampling.top_p <= 1, "--top-p must be above 0 and at most 1"),
                (self.sampling.seed < 0, "--seed must be at least 0"),
            ]
        for wrong, message in problems:
            if wrong:
                raise UsageError(message)

    @classmethod
    def from_options(
        cls,
        *,
        sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> Decoding:
        """A decoding from flat options, as the CLI and ``capcli.load`` take them: ``sample`` with its
        ``temperature``, ``top_p`` and ``seed`` (None: :class:`Sampling`'s defaults), which need it."""
        drawn = {"temperature": temperature, "top_p": top_p, "seed": seed}
        given = {name: value for name, value in drawn.items() if value is not None}
        if given and not sample:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{flags}: only with --sample (without it the beam search picks the words)")
        return cls(sampling=Sampling(**given) if sample else None, **options)

    def spec(self, vocab: Vocab, max_len: int, trigrams: np.ndarray | None = None) -> SearchSpec:
        """The search rules for ``vocab``; ``max_len``: the model's, used unless this decoding sets one;
        ``trigrams``: the model's trigram table (:mod:`capcli.phrasing`), when its bundle has one.

        Raises :class:`~capcli.errors.UsageError` for prefix words outside the vocabulary, for a
        prefix or ``min_len`` longer than the captions may be, and for ``unseen_trigram_penalty``
        without a table.
        """
        longest = self.max_len or max_len
        words = tokenize(self.prefix)
        unknown = [w for w, i in zip(words, vocab.encode(words)) if i == vocab.unk_id]
        if unknown:
            raise UsageError(
                f"--prefix: not in the model's vocabulary: {', '.join(map(repr, unknown))} (every prefix "
                "word must be one the model knows)"
            )
        if len(words) > longest or self.min_len > longest:
            raise UsageError(f"--prefix and --min-len must fit in the longest caption ({longest} words; see --max-len)")
        if self.unseen_trigram_penalty and trigrams is None:
            raise UsageError(
                "--unseen-trigram-penalty: the model has no trigram table of its training text (trigrams.npy; "
                "`capcli export BUNDLE -o NEW --trigrams-from DATASET=DIR` adds one)"
            )
        phrasing = PhraseRule(trigrams, self.unseen_trigram_penalty) if self.unseen_trigram_penalty else None
        return SearchSpec.for_vocab(
            vocab,
            longest,
            length_penalty=self.length_penalty,
            no_repeat_ngram=self.no_repeat_ngram,
            no_end_after=() if self.allow_dangling_end else dangling_ids(vocab),
            say_once=say_once_ids(vocab) if self.no_repeated_words else (),
            min_len=self.min_len,
            prefix=tuple(vocab.encode(words)),
            n_best=self.num_captions,
            sampling=self.sampling,
            phrasing=phrasing,
        )


def block_repeats(scores: np.ndarray, history: np.ndarray, n: int) -> None:
    """Set to -inf in ``scores`` (N, V) each word that would repeat an n-gram of its row's ``history`` (N, t)."""
    t = history.shape[1]
    if n <= 0 or t < n:
        return
    tail = history[:, t - n + 1 :]  # (N, n-1) the words an n-gram ending now starts with
    windows = np.stack([history[:, p : p + n - 1] for p in range(t - n + 1)], axis=1)  # (N, P, n-1)
    rows, starts = np.nonzero((windows == tail[:, None, :]).all(axis=2))
    scores[rows, history[rows, starts + n - 1]] = -np.inf


def block_said(scores: np.ndarray, history: np.ndarray, say_once: np.ndarray) -> None:
    """Set to -inf in ``scores`` (N, V) each word of ``say_once`` ((V,) bool) its row's ``history`` (N, t) holds."""
    rows, cols = np.nonzero(say_once[history])
    scores[rows, history[rows, cols]] = -np.inf


def block_dangling_end(scores: np.ndarray, history: np.ndarray, spec: SearchSpec) -> None:
    """Set <end> to -inf in ``scores`` (N, V) for the rows whose last word of ``history`` (N, t) may not end."""
    t = history.shape[1]
    if 0 < t < spec.max_len and len(spec.no_end_after):
        dangling = (history[:, -1:] == np.asarray(spec.no_end_after)).any(axis=1)  # (N,); np.isin sorts: slower here
        scores[dangling, spec.end_id] = -np.inf


def apply_rules(scores: np.ndarray, history: np.ndarray, t: int, spec: SearchSpec) -> np.ndarray:
    """Every rule of ``spec`` at step ``t`` on ``scores`` (N, V), given each row's ``history`` (N, t); returns it."""
    spec.mask_inplace(scores, t)
    if t >= len(spec.prefix):  # the prefix is forced, even when it repeats itself
        if spec.phrasing is not None:
            scores -= spec.phrasing(*last_two(history, spec.start_id), scores.shape[1])  # (N, V)
        block_repeats(scores, history, spec.no_repeat_ngram)
        if len(spec.say_once) and t:
            block_said(scores, history, spec.said_once_mask(scores.shape[1]))
    block_dangling_end(scores, history, spec)
    return scores


def _repeat_state(state: State, k: int) -> State:
    return {name: np.repeat(value, k, axis=0) for name, value in state.items()}


def _top(scores: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``width`` best entries of each row (indices, values), best first, ties by lower index.

    Repeated argmax: for a handful of winners among thousands it is several
    times faster than np.argpartition + a sort, and its tie rule is built in.
    ``scores`` is used as scratch space: the winners are overwritten with -inf.
    """
    work = scores
    rows = np.arange(len(scores))
    index = np.empty((len(scores), width), dtype=np.int64)
    value = np.empty((len(scores), width), dtype=scores.dtype)
    for j in range(width):
        best = work.argmax(axis=1)  # the first maximum
        index[:, j] = best
        value[:, j] = work[rows, best]
        work[rows, best] = -np.inf
    return index, value


def greedy(step: StepFn, state: State, spec: SearchSpec) -> list[Hypothesis]:
    """Most likely next word at every step, for all B images at once (one row each).

    Images whose caption has ended leave the batch.
    """
    return _one_row_search(step, state, spec, lambda scores, rows: scores.argmax(axis=1))


def sample(step: StepFn, state: State, spec: SearchSpec, keys: Sequence[int]) -> list[Hypothesis]:
    """Draw each word of all B images at once (one row each), under ``spec.sampling``.

    ``keys`` (B,) name the images: image ``i`` draws one number a step from its own
    stream, seeded by ``(spec.sampling.seed, keys[i])``, so its caption depends on
    neither the batch nor its position there.  The score is the caption's
    log-probability under the model (not the temperature's), normalised as in a search.
    """
    assert spec.sampling is not None and len(keys) == next(iter(state.values())).shape[0]
    sampling = spec.sampling
    streams = [np.random.default_rng([sampling.seed, int(key)]) for key in keys]

    def draw(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        uniform = np.array([streams[i].random() for i in rows])
        return draw_tokens(scores, uniform, sampling.temperature, sampling.top_p)

    return _one_row_search(step, state, spec, draw)


def draw_tokens(scores: np.ndarray, uniform: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """One token per row of ``scores`` (N, V) (log-probabilities, forbidden at -inf), by inverse CDF from
    ``uniform`` (N,) in [0, 1): softmax(scores / temperature) cut to its top-p nucleus, likeliest first
    (ties by lower id).  A row with no allowed token gets one of its -inf tokens (the caller sees it stuck)."""
    logits = scores.astype(np.float64) / temperature
    top = logits.max(axis=1, keepdims=True)
    probs = np.exp(logits - np.where(np.isfinite(top), top, 0.0))  # -inf -> 0
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    before = np.cumsum(ranked, axis=1) - ranked  # mass of the likelier words
    nucleus = before < top_p * ranked.sum(axis=1, keepdims=True)  # always the likeliest word
    cumulative = np.cumsum(np.where(nucleus, ranked, 0.0), axis=1)
    pick = (cumulative <= uniform[:, None] * cumulative[:, -1:]).sum(axis=1)
    pick = np.clip(pick, 0, np.maximum(nucleus.sum(axis=1) - 1, 0))  # u * total may round up to total
    return order[np.arange(len(order)), pick]


Choose = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (scores (n, V), images (n,)) -> tokens (n,)


def _one_row_search(step: StepFn, state: State, spec: SearchSpec, choose: Choose) -> list[Hypothesis]:
    """Greedy and sampling: one row per image, its next word picked by ``choose``; ended images leave."""
    n = next(iter(state.values())).shape[0]
    rows = np.arange(n)  # images still decoding, ascending: one row each
    tokens = np.full(n, spec.start_id, dtype=np.int64)
    total = np.zeros(n)
    finished = np.zeros(n, dtype=bool)
    ids = np.full((n, spec.max_len + 1), -1, dtype=np.int64)  # -1: not a word of this row
    alphas: np.ndarray | None = None  # (N, T, L)
    for t in range(spec.max_len + 1):
        logprobs, state, alpha = step(tokens, state, rows)
        if alphas is None:
            alphas = np.zeros((n, spec.max_len + 1, alpha.shape[1]), dtype=alpha.dtype)
        alphas[rows, t] = alpha
        masked = apply_rules(logprobs, ids[rows, :t], t, spec)  # (n_live, V) (logprobs is ours to change)
        tokens = choose(masked, rows).astype(np.int64)  # (n_live,)
        chosen = masked[np.arange(len(rows)), tokens]  # (n_live,)
        stuck = ~np.isfinite(chosen)  # nothing allowed: stays a partial caption
        ends = ~stuck & (tokens == spec.end_id)
        words = ~stuck & ~ends
        total[rows[~stuck]] += chosen[~stuck]
        finished[rows[ends]] = True
        ids[rows[words], t] = tokens[words]
        if not words.any():
            break
        rows, tokens = rows[words], tokens[words]
        state = {name: value[words] for name, value in state.items()}
    assert alphas is not None
    out = []
    for i in range(n):
        keep = ids[i] >= 0
        length = int(keep.sum()) + int(finished[i])
        out.append(
            Hypothesis(
                ids=ids[i][keep].tolist(),
                score=float(spec.normalise(total[i], length)),
                alphas=alphas[i][keep],
                finished=bool(finished[i]),
            )
        )
    return out


def search(step: StepFn, state: State, spec: SearchSpec, beam: int, keys: Sequence[int]) -> list[list[Hypothesis]]:
    """The search ``spec`` asks for, per image: :func:`sample` with ``spec.sampling`` (``keys``: see there),
    else :func:`greedy` for ``beam`` 1, else :func:`beam_search_n_best`; each image's hypotheses, best first."""
    if spec.sampling is not None:
        return [[h] for h in sample(step, state, spec, keys)]
    if beam == 1:
        return [[h] for h in greedy(step, state, spec)]
    return beam_search_n_best(step, state, spec, beam)


def beam_search(step: StepFn, state: State, spec: SearchSpec, beam: int = 3) -> list[Hypothesis]:
    """The best hypothesis of each image by :func:`beam_search_n_best`."""
    return [found[0] for found in beam_search_n_best(step, state, spec, beam)]


def beam_search_n_best(step: StepFn, state: State, spec: SearchSpec, beam: int = 3) -> list[list[Hypothesis]]:
    """Beam search for B images at once; ``step`` is called with up to N = B * beam rows.

    ``state`` holds the initial state per image, (B, ...); it is repeated here.
    Per image, every step ranks all ``beam x V`` extensions of its live
    hypotheses by raw log-probability; <end> extensions ranked within the best
    ``beam`` are set aside as finished (the best one per image is kept; as in
    fairseq, so beam 1 is exactly greedy), the best ``beam`` word extensions
    live on.  An image is done once it holds ``beam`` finished hypotheses and its
    best live one, normalised at its current length, no longer beats the
    ``spec.n_best``-th best finished one; it then leaves the batch.  Each image
    returns its ``spec.n_best`` best finished hypotheses, best first (distinct:
    each is its own path of the beam; fewer when the search ran out of
    hypotheses), or its best partial one when none could end.

    Each step, in order: :func:`_advance` (run the decoder step),
    :func:`_extensions` (rank the candidate extensions),
    :meth:`_Beams.set_aside_ended`, :func:`_next_rows` (the beams that live on),
    :meth:`_Beams.finish_done` and :meth:`_Beams.keep`.
    """
    if not 1 <= spec.n_best <= beam:
        raise ValueError(f"n_best must be between 1 and the beam width {beam}")
    beams = _Beams.start(next(iter(state.values())).shape[0], beam, spec.start_id, spec.n_best)
    for t in range(spec.max_len + 1):
        logprobs, state, steps_alpha = _advance(step, state, beams, t)
        # (n, V), forbidden words at -inf (logprobs is ours to change)
        allowed = apply_rules(logprobs, beams.history, t, spec)
        ext = _extensions(allowed, beams.scores, beam, spec.end_id)
        beams.set_aside_ended(ext, steps_alpha, t, spec)
        new_rows, new_tokens, new_scores = _next_rows(ext, beam, spec.end_id)
        beams.finish_done(ext, new_scores, steps_alpha, t, spec)
        if not beams.keep(new_rows, new_tokens, new_scores, steps_alpha):
            break
        state = {name: value[beams.kept_rows] for name, value in state.items()}
    return beams.found  # every image ends done, with at least one hypothesis


@dataclass
class _Extensions:
    """The ``2K`` best extensions of each of the ``m`` images still searching, best first."""

    src: np.ndarray  # (m, 2K) the row each extends
    word: np.ndarray  # (m, 2K) the word it adds
    scores: np.ndarray  # (m, 2K) raw log-probability of the extended hypothesis
    ended: np.ndarray  # (m, 2K) bool: an <end> within the best K, set aside as finished
    live: np.ndarray  # (m, 2K) bool: one of the best K word extensions, which live on
    slot: np.ndarray  # (m, 2K) position of a word extension among its image's live ones


@dataclass
class _Beams:
    """The search's own state between steps (rows are image-major, K per image)."""

    k: int
    n: int  # finished hypotheses kept per image
    images: np.ndarray  # (m,) images still searching, ascending
    tokens: np.ndarray  # (m*K,) the word each row feeds the next step
    scores: np.ndarray  # (m, K) raw log-probability of each row's hypothesis
    history: np.ndarray  # (m*K, t) word ids of each live row
    alpha_history: np.ndarray | None  # (m*K, t, L)
    found: list[list[Hypothesis]]  # (B,) each image's n best finished hypotheses so far, best first
    bar: np.ndarray  # (B,) found[i][n-1].score; nan: fewer than n yet (every comparison with it is False)
    n_finished: np.ndarray  # (B,) finished hypotheses seen per image
    done: np.ndarray | None = None  # (m,) bool, this step's images that leave
    kept_rows: np.ndarray | None = None  # back-pointers of the rows that go on

    @classmethod
    def start(cls, b: int, k: int, start_id: int, n: int = 1) -> _Beams:
        scores = np.full((b, k), -np.inf)
        scores[:, 0] = 0.0  # only the first row of each image is live at the start: all K rows are identical
        return cls(
            k,
            n,
            np.arange(b),
            np.full(b * k, start_id, dtype=np.int64),
            scores,
            np.zeros((b * k, 0), dtype=np.int64),
            None,
            [[] for _ in range(b)],
            np.full(b, np.nan),
            np.zeros(b, dtype=int),
        )

    def set_aside_ended(self, ext: _Extensions, steps_alpha: np.ndarray, t: int, spec: SearchSpec) -> None:
        """Count each image's finished hypotheses; keep the ``n`` best (normalised by length)."""
        self.n_finished[self.images] += ext.ended.sum(axis=1)
        norm = np.where(ext.ended, ext.scores, -np.inf) / float((t + 1) ** spec.length_penalty)
        for j in np.flatnonzero(ext.ended.any(axis=1)):
            i = self.images[j]
            for c in np.flatnonzero(ext.ended[j])[: self.n]:  # best first (the first one on ties)
                score = float(norm[j, c])
                if len(self.found[i]) == self.n and not score > self.bar[i]:
                    break  # neither can the worse ones of this step
                row = ext.src[j, c]
                self._add(i, Hypothesis(self.history[row].tolist(), score, steps_alpha[row, :t], True))

    def _add(self, i: int, hyp: Hypothesis) -> None:
        """Insert ``hyp`` among image ``i``'s best, after those that score as well (earlier ones win ties)."""
        found = self.found[i]
        at = next((p for p, h in enumerate(found) if hyp.score > h.score), len(found))
        found.insert(at, hyp)
        del found[self.n :]
        if len(found) == self.n:
            self.bar[i] = found[-1].score

    def finish_done(
        self, ext: _Extensions, new_scores: np.ndarray, steps_alpha: np.ndarray, t: int, spec: SearchSpec
    ) -> None:
        """Mark the images that are done; one that never ended keeps its best partial caption."""
        k = self.k
        beaten = new_scores[:, 0] / float((t + 1) ** spec.length_penalty) <= self.bar[self.images]
        self.done = (ext.live.sum(axis=1) == 0) | ((self.n_finished[self.images] >= k) & beaten)
        for j in np.flatnonzero(self.done):
            i = self.images[j]
            if not self.found[i]:  # never ended: keep its best partial caption, as it was before this step
                jj = int(np.argmax(self.scores[j]))
                row = j * k + jj
                self.found[i] = [
                    Hypothesis(
                        self.history[row].tolist(),
                        float(spec.normalise(self.scores[j, jj], t)),
                        steps_alpha[row, :t],
                        False,
                    )
                ]

    def keep(
        self, new_rows: np.ndarray, new_tokens: np.ndarray, new_scores: np.ndarray, steps_alpha: np.ndarray
    ) -> bool:
        """Reorder the rows of the images that go on by their back-pointers; False when none does."""
        assert self.done is not None
        keep = ~self.done
        if not keep.any():
            return False
        m, k = len(self.images), self.k
        self.kept_rows = new_rows.reshape(m, k)[keep].reshape(-1)
        self.history = np.concatenate(
            [self.history[self.kept_rows], new_tokens.reshape(m, k)[keep].reshape(-1, 1)], axis=1
        )
        self.alpha_history = steps_alpha[self.kept_rows]  # (n', t+1, L)
        self.tokens = new_tokens.reshape(m, k)[keep].reshape(-1)
        self.scores = new_scores[keep]
        self.images = self.images[keep]
        return True


def _advance(step: StepFn, state: State, beams: _Beams, t: int) -> tuple[np.ndarray, State, np.ndarray]:
    """One decoder step over the live rows: (logprobs (n, V), new state, attention so far (n, t+1, L))."""
    k = beams.k
    if t == 0:  # an image's K rows are still identical: compute the first, copy it
        logprobs, state, alpha = step(beams.tokens[::k], state, beams.images)
        logprobs, alpha = np.repeat(logprobs, k, axis=0), np.repeat(alpha, k, axis=0)
        state = _repeat_state(state, k)
    else:
        logprobs, state, alpha = step(beams.tokens, state, beams.images)
    if beams.alpha_history is None:
        return logprobs, state, alpha[:, None, :]
    return logprobs, state, np.concatenate([beams.alpha_history, alpha[:, None, :]], axis=1)  # (n, t+1, L)


def _extensions(allowed: np.ndarray, scores: np.ndarray, k: int, end_id: int) -> _Extensions:
    """Rank each image's extensions: its ``2K`` best (at most K can be <end>, so >= K words remain)."""
    m, width = len(scores), 2 * k
    # A row's score is the same for all its words, so each image's 2K best extensions are among
    # its rows' 2K best words: rank those (n, 2K) instead of all K x V (same order, same ties).
    row_words, row_logprobs = _top(allowed, width)  # (n, 2K) each, best first, ties by lower id
    cand = (scores.reshape(-1, 1) + row_logprobs).reshape(m, k * width)  # (m, K*2K) float64
    pick, flat_scores = _top(cand, width)  # (m, 2K) each, best first, ties by (row, word)
    valid = np.isfinite(flat_scores)  # -inf sorts last: a prefix of each row
    src = np.arange(m)[:, None] * k + pick // width  # (m, 2K) source row of each candidate
    word = row_words.reshape(m, k * width)[np.arange(m)[:, None], pick]  # (m, 2K)
    is_end = valid & (word == end_id)
    ended = is_end & (np.arange(width) < k)  # as in fairseq: an <end> outside the top K is not taken
    is_word = valid & ~is_end
    slot = np.cumsum(is_word, axis=1) - 1  # position among the live words
    return _Extensions(src, word, flat_scores, ended, is_word & (slot < k), slot)


def _next_rows(ext: _Extensions, k: int, end_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(back-pointer (m*K,), token (m*K,), score (m, K)) of the rows that live on."""
    m = len(ext.src)
    new_rows = np.repeat(np.arange(m) * k, k)  # rows left without a hypothesis copy a row, at -inf
    new_tokens = np.full(m * k, end_id, dtype=np.int64)
    new_scores = np.full((m, k), -np.inf)
    j, c = np.nonzero(ext.live)
    new_rows[j * k + ext.slot[j, c]] = ext.src[j, c]
    new_tokens[j * k + ext.slot[j, c]] = ext.word[j, c]
    new_scores[j, ext.slot[j, c]] = ext.scores[j, c]
    return new_rows, new_tokens, new_scores
