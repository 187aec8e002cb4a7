"""TensorFlow and PyTorch's compiler stack in one process (the dev image has PyTorch's CUDA build, with Triton)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib.util, sys
from mllib import tflib
tf = tflib.tensorflow()
assert ("triton" in sys.modules) == (importlib.util.find_spec("triton") is not None)
import torch, torch._dynamo   # what torch.optim imports on first use; with Triton, Triton too
opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
print("ok", tf.__version__)
"""


def test_tensorflow_then_torch_optimizer_in_one_process():
    """Where Triton is installed, loading it after TensorFlow crashes the process (SIGSEGV): mllib's TensorFlow
    import loads it first, so a TensorFlow step followed by torch.optim in one process works."""
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok "), (r.returncode, r.stderr[-2000:])
