"""The encoder computing in float16 (``--precision float16``), made in memory from any bundle.

onnxruntime's own converter (``onnxruntime.transformers.float16``) rewrites
``encoder.onnx`` so that every float tensor inside the graph is float16 while
its input and outputs stay float32 (a cast at each edge; the ops of the
converter's block list, ``TopK`` among them, stay float32 behind casts).  The
bundle is unchanged, and so is the decoder: only the encoder, the larger share
of the arithmetic, moves to float16, where a GPU's tensor cores run it.  On the
CPU onnxruntime has few float16 kernels and computes most nodes in float32
between casts: no faster, but the same roundings, which is how the tests and
``benchmarks/parity.py --check float16`` check its captions without a GPU.
"""

from __future__ import annotations

from capcli.errors import FatalError


def float16_encoder(data: bytes) -> bytes:
    """The serialized encoder ``data`` with float16 arithmetic inside and float32 input and outputs."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # onnx is installed with onnxruntime-gpu's platforms only (pyproject.toml)
        raise FatalError(f"--precision float16 needs the onnx package ({exc}): pip install onnx") from exc
    model = convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True)
    return model.SerializeToString()
