"""A PyTorch checkpoint rebuilt from a bundle, for `capcli bench --checkpoint` when the training one is gone.

The tutorial-way scenario of ``capcli bench`` runs the model in PyTorch, so it
needs a checkpoint. The shipped model's was not kept; its weights are all in
the bundle, though:

- decoder.onnx and encoder.onnx keep the training names of the decoder,
  projection and initial-state weights; the two matrix products the exporter
  rewrote as ``MatMul`` (region projection, attention keys) hold the
  transposed weights under generated names;
- the exporter folded each batch norm into the convolution before it, so the
  convolutions get the folded weights and bias, and each batch norm becomes an
  identity (mean 0, variance 1 - eps, scale 1, the folded bias as its shift).

That pairing assumes every convolution is followed by its batch norm in the
module order, and that the graph runs the convolutions in that order (true of
EfficientNet-Lite). The rebuilt model then goes through the export's parity
check against the bundle (encoder outputs and 5 decoder steps, on real
photos); the script refuses to write a checkpoint that disagrees. The
batch norms are identities only in eval mode: use the result for inference
(and frozen-backbone training), not for fine-tuning the backbone.

    python benchmarks/rebuild_checkpoint.py capcli/models/default /tmp/shipped.pt
    capcli bench --checkpoint /tmp/shipped.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from capcli.export.parity import check_parity
from onnx import numpy_helper
from torch import nn

from capcli.bundle import DECODER, ENCODER, Bundle, load_bundle
from capcli.train.model import CaptionModel, ModelConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO / "examples"


def rebuild(bundle_dir: str) -> tuple[CaptionModel, Bundle]:
    bundle = load_bundle(bundle_dir)
    cfg = ModelConfig.from_dict({**bundle.meta["model_config"], "pretrained": False})
    model = CaptionModel(cfg).eval()
    graphs = [onnx.load_from_string(bundle.files[name]) for name in (ENCODER, DECODER)]
    weights = {i.name: numpy_helper.to_array(i) for g in graphs for i in g.graph.initializer}
    for node in (n for g in graphs for n in g.graph.node):
        if node.op_type == "Constant":  # small weights may come as Constant nodes
            weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Cast" and node.input[0] in weights:  # --float16-weights: float16, cast back
            weights[node.output[0]] = weights[node.input[0]].astype(np.float32)
    convs = [n for n in graphs[0].graph.node if n.op_type == "Conv"]
    pairs: list[list[nn.Module | None]] = []  # [conv, its batch norm]
    # The graph runs the backbone's stages, then the tagger's copy of the top ones (grounded models).
    networks = [model.backbone, *([model.tagger] if model.tagger is not None else [])]
    for module in (m for net in networks for m in net.modules()):
        if isinstance(module, nn.Conv2d):
            pairs.append([module, None])
        elif isinstance(module, nn.BatchNorm2d):
            if not pairs or pairs[-1][1] is not None:
                sys.exit("a batch norm that follows no convolution: this backbone is not supported")
            pairs[-1][1] = module
    if len(pairs) != len(convs):
        sys.exit(f"{len(pairs)} convolutions in PyTorch, {len(convs)} in encoder.onnx: not supported")

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array))

    with torch.no_grad():
        for node, (conv, bn) in zip(convs, pairs):
            weight = weights[node.input[1]]
            bias = weights[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
            conv.weight.copy_(tensor(weight))
            if conv.bias is not None:
                conv.bias.copy_(tensor(bias))
                bias = np.zeros_like(bias)
            if bn is not None:
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
                bn.bias.copy_(tensor(bias))
        state = model.state_dict()
        for name, array in weights.items():
            key = name.removeprefix("model.")
            if key.startswith(("project.", "decoder.", "tagger.classifier.")) and key in state:
                state[key].copy_(tensor(array))
        for node in graphs[0].graph.node:
            if node.op_type == "MatMul" and node.input[1] in weights:
                key = "project.1.weight" if "project" in node.name else "decoder.keys.weight"
                state[key].copy_(tensor(weights[node.input[1]].T))
    model.load_state_dict(state)
    return model, bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("out", help="checkpoint file to write")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="photos to check the rebuilt model on")
    args = parser.parse_args()
    model, bundle = rebuild(args.bundle)
    report = check_parity(model, bundle.path, [args.images])
    print("\n".join(report.lines()))
    if not report.ok:
        sys.exit("the rebuilt model disagrees with the bundle: not written")
    payload = {
        "config": model.config.to_dict(),
        "vocab": list(bundle.vocab.tokens),
        "model": model.state_dict(),
        "provenance": {
            "rebuilt_from_bundle": str(bundle.path),
            "files": bundle.meta["files"],
            "parity": report.to_dict(),
        },
    }
    torch.save(payload, args.out)
    print(f"checkpoint written to {args.out}")


if __name__ == "__main__":
    main()
