"""The encoder taking 8-bit pixels and normalising them itself, made in memory from any bundle.

Under CUDA every batch's input crosses to the GPU; as float32 ``(B, 3, H, W)``
a 260-px photo is 811 KB, four times its pixels.  This rewrite of
``encoder.onnx`` gives it the input ``pixels`` ``(B, H, W, 3)`` uint8 (the
resized photo as Pillow decoded it) and computes the normalised tensor inside
the graph with the arithmetic of :func:`capcli.images.to_array`: a transpose,
then per channel one float32 multiply and one float32 add with the same
constants, so the encoder sees the same bits and every caption stays the same
(tests compare them on the CPU provider).  The bundle is unchanged.

On the CPU the rewrite gains nothing (the normalisation only moves from the
reader threads into the encoder) and importing onnx costs about 0.6 s, so the
runtime uses it under CUDA only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capcli.images import channel_constants

if TYPE_CHECKING:
    from capcli.bundle import Preprocess

PIXELS = "pixels"  # the rewritten encoder's input


def pixel_input_encoder(data: bytes, pre: Preprocess) -> bytes | None:
    """The serialized encoder ``data`` taking ``pixels`` (B, H, W, 3) uint8; None without the onnx package
    (installed where onnxruntime-gpu is, pyproject.toml)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    model = onnx.load_from_string(data)
    graph = model.graph
    [image] = graph.input  # (B, 3, H, W) float32: now made by the nodes below
    scale, offset = channel_constants(pre)
    graph.initializer.extend(
        [
            numpy_helper.from_array(scale.reshape(1, 3, 1, 1), "pixel_scale"),
            numpy_helper.from_array(offset.reshape(1, 3, 1, 1), "pixel_offset"),
        ]
    )
    prefix = [
        helper.make_node("Transpose", [PIXELS], ["pixels_chw"], perm=[0, 3, 1, 2]),  # (B, 3, H, W) uint8
        helper.make_node("Cast", ["pixels_chw"], ["pixels_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels_float", "pixel_scale"], ["pixels_scaled"]),
        helper.make_node("Add", ["pixels_scaled", "pixel_offset"], [image.name]),
    ]
    nodes = prefix + list(graph.node)  # the prefix first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    height, width = pre.size
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["batch", height, width, 3]))
    return model.SerializeToString()
