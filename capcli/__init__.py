"""capcli: batch image captioning with ONNX bundles driven by onnxruntime.

The Python API, in one call::

    import capcli

    model = capcli.load()  # the packaged model; device="auto", beam=3
    for record in model.caption(["photo.jpg", "https://example.com/cat.png"]):
        print(record["source"], record["caption"])

See :func:`capcli.load` and :class:`capcli.Model`. Importing capcli is light:
onnxruntime is loaded by ``load()``, torch only by training and export.
"""

__version__ = "0.1.0"

from capcli.api import Input, Model, load  # noqa: E402
from capcli.errors import CapcliError, FatalError, ItemError, UsageError  # noqa: E402

__all__ = ["CapcliError", "FatalError", "Input", "ItemError", "Model", "UsageError", "__version__", "load"]
