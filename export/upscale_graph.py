"""Writes ``capcli/upscale.onnx``: the reader's bilinear upscaling and normalisation as one onnxruntime graph.

``python -m export.upscale_graph`` regenerates the file (it needs the
``onnx`` package, which capcli's runtime does not); a test checks that the
committed file is what this module builds.

The graph: ``pixels`` uint8 (h, w, 3), ``size`` int64 [H, W], ``scale`` and
``shift`` float32 (1, 3, 1, 1) -> float32 (3, H, W) =
``resize(pixels * scale + shift)``, bilinear with half-pixel centres.  When no
side shrinks, that is what Pillow's bilinear filter computes (its support
only widens for downscaling), but about twice as fast on an AVX2 core, and
without rounding the resized pixels to 8 bits.  The affine normalisation goes
first, on the smaller image: a bilinear resize commutes with it (its weights
sum to 1).
"""

from __future__ import annotations

from pathlib import Path

GRAPH = Path(__file__).resolve().parent.parent / "capcli" / "upscale.onnx"
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime capcli supports (>= 1.20)


def build() -> bytes:
    """The serialised graph (deterministic)."""
    from onnx import TensorProto, checker, helper

    node = helper.make_node
    nodes = [
        node("Unsqueeze", ["pixels", "axis0"], ["batched"]),  # (1, h, w, 3)
        node("Transpose", ["batched"], ["planar"], perm=[0, 3, 1, 2]),  # (1, 3, h, w)
        node("Cast", ["planar"], ["floats"], to=TensorProto.FLOAT),
        node("Mul", ["floats", "scale"], ["scaled"]),
        node("Add", ["scaled", "shift"], ["normalised"]),
        node("Concat", ["batch_and_channels", "size"], ["sizes"], axis=0),  # [1, 3, H, W]
        node("Resize", ["normalised", "", "", "sizes"], ["resized"], mode="linear",
             coordinate_transformation_mode="half_pixel"),  # (1, 3, H, W)
        node("Squeeze", ["resized", "axis0"], ["image"]),  # (3, H, W)
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "capcli-upscale",
        [
            helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["h", "w", 3]),
            helper.make_tensor_value_info("size", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1, 3, 1, 1]),
            helper.make_tensor_value_info("shift", TensorProto.FLOAT, [1, 3, 1, 1]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "H", "W"])],
        [
            helper.make_tensor("axis0", TensorProto.INT64, [1], [0]),
            helper.make_tensor("batch_and_channels", TensorProto.INT64, [2], [1, 3]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="capcli"
    )
    checker.check_model(model, full_check=True)
    return model.SerializeToString()


def main() -> None:
    GRAPH.write_bytes(build())
    print(f"wrote {GRAPH}")


if __name__ == "__main__":
    main()
