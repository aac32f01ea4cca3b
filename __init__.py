"""dawnpipe: train a fast CIFAR-10 ResNet-9, export it to ONNX/TensorRT, evaluate it with and without TTA, and
account for what TTA costs.

The installed package ``dawnpipe`` is this folder: ``dawnpipe.common < dawnpipe.train < dawnpipe.export <
dawnpipe.infer < dawnpipe.costs < dawnpipe.cli``, each stage importing only the ones before it.
"""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

try:
    __version__ = _version("dawnpipe")
except _NotInstalled:  # a source tree that was never installed
    __version__ = "0+unknown"
