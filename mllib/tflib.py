"""TensorFlow and Keras, imported so that they can share a process with PyTorch's CUDA build.

    tf = tflib.tensorflow()        # instead of `import tensorflow as tf`
    keras = tflib.keras()

PyTorch's CUDA wheels bring Triton, and Triton's compiler library crashes the process (SIGSEGV) when it is loaded
after TensorFlow's: `import tensorflow; import triton` with tensorflow 2.21 and triton 3.7.1 (torch 2.13's), found
by running the test suite in the dev image (.ci/container), where torch.optim imported torch._dynamo and with it
Triton after a TensorFlow test. Loaded in the other order both work, so mllib loads Triton first wherever it loads
TensorFlow. Where Triton is not installed (PyTorch's CPU build) nothing extra is imported. Your own code that imports
TensorFlow before PyTorch trains in the same process should import torch._dynamo (or triton) first.
"""

from __future__ import annotations

import importlib.util


def _triton_first() -> None:
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def tensorflow():
    _triton_first()
    import tensorflow as tf

    return tf


def keras():
    _triton_first()
    import keras as k

    return k
