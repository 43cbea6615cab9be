"""``capcli bench``: the limit, capcli end to end and the tutorial way, side by side in one run.

Scenarios (each in a fresh Python process, so that its peak memory is its own
and no scenario inherits another's warm state):

- ``limit``: the bundle's encoder.onnx alone on ready-made input tensors
  (the same photos, preprocessed beforehand), same batch size and session
  options as capcli: nothing end to end can beat it, since every image needs
  one encoder pass;
- ``read``: reading alone, the photos read and preprocessed by capcli's
  reader (``--workers`` threads, then one thread for the scaling), no model:
  whether the readers keep up with the encoder (on a GPU, the open question);
- ``capcli`` end to end: files on disk -> records in a JSONL file, through the
  same pieces ``capcli caption -`` runs (stdin path list, reader pool,
  batches, runtime, writer), greedy and beam 3, on the 224-px photos and on
  phone-size JPEGs (4032x3024, quality 90, with grain) generated from them;
- ``tutorial``: the same model's PyTorch checkpoint captioning one image at a
  time in eager mode, as tutorial code does (PIL, torchvision transform,
  encoder, a Python step loop), greedy and beam 3; needs torch and
  ``--checkpoint``;
- ``memory`` (opt-in, slow): peak memory end to end for 1,000 vs 20,000 inputs.

Each process times its stages: read/decode (CPU time of the reader threads,
overlapped with inference in capcli), encode and decode loop (summed over
capcli's lanes, the batches captioned at once), write, and ``idle``: lane
time spent outside the model (waiting for images, batching), where a starved
encoder would show.  Before the clock starts, every process runs its timed path
once on a few inputs, as the timed part runs it: capcli's pipeline on one
batch per lane, the limit's batches ``lanes`` at a time, the tutorial's loop
on one photo.  The first batches that run at once make onnxruntime grow its
memory arena (a few hundred MB of fresh pages: those batches run about 40%
slower); left in the timed part, that one-off cost would weigh on 200 images
and be gone on 20,000.  Model loading and warm-up are timed apart
(``load_seconds``), as in capcli's own summary.  The
ratios and targets are those of issue 6; the machine is described next to them.

Modules: :mod:`~capcli.bench.scenarios` (what runs, the results, the ratios),
:mod:`~capcli.bench.runner` (the parent: one fresh process per scenario),
:mod:`~capcli.bench.worker` (``python -m capcli.bench.worker SPEC_JSON``: the limit and
capcli end to end, one JSON result line), :mod:`~capcli.bench.tutorial` (the PyTorch
tutorial way) and :mod:`~capcli.bench.report` (the tables).
"""

from __future__ import annotations

from capcli.bench.runner import run_bench
from capcli.bench.scenarios import BenchConfig, Ratio, Report, Result, Scenario, ratios, scenarios

__all__ = ["BenchConfig", "Ratio", "Report", "Result", "Scenario", "ratios", "run_bench", "scenarios"]
