"""onnxruntime vs PyTorch on the same inputs: the exported bundle must compute what the model does.

The bundle is loaded the way ``capcli caption`` loads it (:func:`capcli.bundle.load_bundle`,
:class:`capcli.runtime.Captioner` on the CPU) and images are preprocessed the
runtime's way (:mod:`capcli.images`).  The encoder outputs are compared, then
``steps`` decoder steps are run on both sides, each carrying its own
recurrent state, fed the same tokens (PyTorch's greedy choice), so the
differences include whatever accumulates over a caption.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capcli.bundle import Preprocess, load_bundle
from capcli.errors import FatalError
from capcli.runtime import Captioner
from capcli.train.model import CaptionModel

DEFAULT_TOLERANCE = 1e-3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ParityError(FatalError):
    """onnxruntime and PyTorch disagree beyond the tolerance."""


@dataclass
class ParityReport:
    inputs: str  # what was fed: "3 photos from DIR" or "3 random images"
    steps: int
    tolerance: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per tensor, over all steps

    @property
    def ok(self) -> bool:
        return all(d <= self.tolerance for d in self.max_abs_diff.values())

    def lines(self) -> list[str]:
        out = [f"parity (onnxruntime vs PyTorch) on {self.inputs}, {self.steps} decoder steps:"]
        for name, diff in self.max_abs_diff.items():
            verdict = "ok" if diff <= self.tolerance else f"FAIL (> {self.tolerance:g})"
            out.append(f"  {name:<9} max abs diff {diff:.2e}  {verdict}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "steps": self.steps,
            "tolerance": self.tolerance,
            "max_abs_diff": self.max_abs_diff,
        }


def find_images(paths: Sequence[str | os.PathLike[str]], limit: int = 3) -> list[Path]:
    """Up to ``limit`` image files: the files given, then the sorted contents of directories given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
    return found[:limit]


def check_pixels(
    images: Sequence[str | os.PathLike[str]],
    pre: Preprocess,
    limit: int,
    random_count: int,
    *,
    seed: int = 0,
    name_folders: bool = False,
) -> tuple[np.ndarray, str]:
    """Preprocessed inputs (B, 3, H, W) for comparing graphs, and what they are.

    Up to ``limit`` photos of ``images`` (see :func:`find_images`), or
    ``random_count`` random images when there are none; ``name_folders``
    names the photos' folders in the description.
    """
    from capcli.images import load

    files = find_images(images, limit=limit)
    if not files:
        h, w = pre.size
        pixels = np.random.default_rng(seed).standard_normal((random_count, 3, h, w)).astype(np.float32)
        return pixels, f"{random_count} random images (no photos given)"
    pixels = np.stack([load(str(f), pre).array for f in files])  # (B, 3, H, W)
    where = f" from {', '.join(sorted({str(f.parent) for f in files}))}" if name_folders else ""
    return pixels, f"{len(files)} photo(s){where}"


def check_parity(
    model: CaptionModel,
    bundle_dir: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]] = (),
    *,
    steps: int = 5,
    tolerance: float = DEFAULT_TOLERANCE,
    batch: int = 3,
    seed: int = 0,
) -> ParityReport:
    """Compare the bundle at ``bundle_dir`` with ``model``; never raises on a mismatch (see ``report.ok``)."""
    bundle = load_bundle(bundle_dir)
    captioner = Captioner(bundle, device="cpu", beam=1, precision="float")  # the float graphs are the export
    pixels, inputs = check_pixels(images, bundle.preprocess, batch, batch, seed=seed, name_folders=True)
    report = ParityReport(inputs, steps, tolerance)

    def note(name: str, ours: np.ndarray, theirs: torch.Tensor) -> None:
        diff = float(np.abs(ours - theirs.detach().numpy()).max()) if ours.size else 0.0
        report.max_abs_diff[name] = max(report.max_abs_diff.get(name, 0.0), diff)

    model.eval()
    names = bundle.state_names
    ort_out = captioner.encode(pixels)
    with torch.no_grad():
        encoded = model.encode(torch.from_numpy(pixels))
        features, keys, state, concept = encoded.features, encoded.keys, encoded.state, encoded.concept
        for name, ref in zip((*bundle.context_names, *names), (*encoded.context, *state)):
            note(name, ort_out[name], ref)
        if encoded.tags is not None:
            note("tags", ort_out["tags"], encoded.tags)
        ort_state = {name: ort_out[name] for name in names}
        context = captioner.bind_context(ort_out)
        tokens = torch.full((len(pixels),), bundle.vocab.start_id, dtype=torch.long)
        for t in range(steps):
            logits, state, alpha = model.decoder.step(tokens, state, features, keys, concept)
            logprobs = torch.log_softmax(logits, dim=1)  # (B, V)
            ort_logprobs, ort_state, ort_alpha = captioner.step(tokens.numpy(), ort_state, context)
            note("logprobs", ort_logprobs, logprobs)
            note("alpha", ort_alpha, alpha)
            for name, ref in zip(names, state):
                note(f"{name}_out", ort_state[name], ref)
            masked = captioner.spec.mask(logprobs.numpy(), t)
            tokens = torch.from_numpy(masked.argmax(axis=1))  # (B,) the same tokens for both sides
    return report
