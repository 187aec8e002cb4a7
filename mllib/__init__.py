"""mllib: public segmentation datasets into an object store, and from the store into training.

One sub-package per stage, in the order data flows: get/ (1), store/ (2), labels/ (3), records/ (4), loaders/ (5),
training/ (6); building blocks below them (layout, images, augment, atomic, checks, perprocess); testing/ (servers
for tests and benchmarks); cli (the scripts' flags). README.md's "Development" section is the module map.
"""

__version__ = "0.2.0"
VERSION = f"%(prog)s (mllib) {__version__}"  # what --version prints, in every command (argparse fills in %(prog)s)


class MllibError(Exception):
    """An error a user can act on: scripts print its message on one line and exit non-zero."""

    exit_status = 1  # the input or the job failed (mllib.cli.EXIT_FAILED)


class UsageError(MllibError):
    """A bad flag or value, or flags that do not go together: exit status 2, as argparse's own usage errors."""

    exit_status = 2


# module -> (what it is, the extra that installs it)
EXTRAS = {"torch": ("PyTorch", "torch"), "tensorboard": ("TensorBoard", "torch"),
          "matplotlib": ("matplotlib", "torch"), "yaml": ("PyYAML", "torch"), "tensorflow": ("TensorFlow", "tf"),
          "keras": ("Keras", "tf"), "ray": ("Ray", "ray"), "onnx": ("ONNX", "export"),
          "onnxruntime": ("onnxruntime", "export"), "onnxscript": ("onnxscript", "export")}


class MissingExtra(MllibError):
    """A module of an extra (EXTRAS) is not installed: which extra installs it, in one line."""

    def __init__(self, module: str, who: str = "this"):
        what, extra = EXTRAS[module]
        super().__init__(f"{who} needs {what}, which is not installed: pip install 'mllib[{extra}]' (or pip install "
                         f"-r requirements-{extra}.txt in a checkout)")
