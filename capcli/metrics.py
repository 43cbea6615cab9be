"""Caption metrics with pycocoevalcap: the field's protocol, and a quick Java-free variant.

- :func:`coco_scores` is the standard protocol: PTB tokenizer (Java), BLEU-1..4,
  METEOR (Java), ROUGE-L and CIDEr-D, one hypothesis per image against all of
  its references.  SPICE is left out (it downloads Stanford models).
- :func:`quick_scores` tokenises with :func:`capcli.text.tokenize` instead and
  computes BLEU-4 and CIDEr-D only: no Java, used for dev scores while training.
  Its numbers track the protocol's closely but are not the reportable ones.

No torch here: ``capcli eval --captions`` runs without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence

from capcli.errors import FatalError
from capcli.text import tokenize

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
PROTOCOL = "pycocoevalcap, PTB tokenizer, one hypothesis per image, all references"
QUICK_PROTOCOL = "pycocoevalcap BLEU-4/CIDEr-D on capcli.text tokens (no PTB tokenizer)"

# Punctuation tokens the PTB protocol drops after tokenising (as pycocoevalcap does).
_PTB_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}

References = Mapping[str, Sequence[str]]  # image key -> reference captions
Hypotheses = Mapping[str, str]  # image key -> one generated caption


def quick_scores(references: References, hypotheses: Hypotheses) -> dict[str, float]:
    """BLEU-4 and CIDEr-D over the hypotheses' images, tokenised by capcli.text (no Java)."""
    keys = _check(references, hypotheses)
    gts = {k: [" ".join(tokenize(r)) for r in references[k]] for k in keys}
    res = {k: [" ".join(tokenize(hypotheses[k]))] for k in keys}
    _require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": float(bleu[3]), "CIDEr": float(cider)}


def coco_scores(references: References, hypotheses: Hypotheses, meteor: bool = True) -> dict[str, float]:
    """The standard protocol (see module doc); needs ``java`` on PATH."""
    keys = _check(references, hypotheses)
    _require_pycocoevalcap()
    if shutil.which("java") is None:
        raise FatalError("the evaluation protocol needs Java (PTB tokenizer, METEOR): install a Java runtime")
    ref_keys = [(k, i) for k in keys for i in range(len(references[k]))]
    texts = [references[k][i] for k, i in ref_keys] + [hypotheses[k] for k in keys]
    tokens = _ptb_tokenize(texts)
    gts: dict[str, list[str]] = {k: [] for k in keys}
    for (k, _), text in zip(ref_keys, tokens):
        gts[k].append(text)
    res = {k: [text] for k, text in zip(keys, tokens[len(ref_keys) :])}

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float] = {}
    # The scorers print progress chatter; stdout belongs to our output.
    with contextlib.redirect_stdout(sys.stderr):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
        if meteor:
            scores["METEOR"] = _meteor(gts, res)
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {m: scores[m] for m in METRICS if m in scores}


def _require_pycocoevalcap() -> None:
    try:
        import pycocoevalcap.bleu.bleu  # noqa: F401
    except ModuleNotFoundError:
        raise FatalError("scoring captions needs pycocoevalcap: pip install 'capcli[train]'") from None


def _check(references: References, hypotheses: Hypotheses) -> list[str]:
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    unknown = [k for k in hypotheses if k not in references]
    if unknown:
        raise ValueError(f"{len(unknown)} hypotheses have no references, e.g. {unknown[0]!r}")
    empty = [k for k in hypotheses if not references[k]]
    if empty:
        raise ValueError(f"{len(empty)} images have no reference captions, e.g. {empty[0]!r}")
    return list(hypotheses)


def _ptb_tokenize(texts: list[str]) -> list[str]:
    """Stanford PTB tokenizer as pycocoevalcap runs it (lower-cased, punctuation dropped).

    Run here rather than through ``PTBTokenizer`` because that one writes its
    temporary file into the installed package folder, which may be read-only.
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    # An empty line would vanish from the output and shift every later line.
    lines = [" ".join(t.split()) or "." for t in texts]
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines))
    try:
        cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", f.name]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8")
    except subprocess.CalledProcessError as exc:
        raise FatalError(f"PTB tokenizer failed: {exc.stderr.decode(errors='replace')[-500:]}") from exc
    finally:
        os.remove(f.name)
    result = [" ".join(w for w in line.split(" ") if w and w not in _PTB_PUNCTUATION) for line in out.split("\n")]
    if len(result) < len(lines):
        raise FatalError(f"PTB tokenizer returned {len(result)} lines for {len(lines)} captions")
    return result[: len(lines)]


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.wait()
