"""The documented name of mllib.loaders.cocodataset: CocoDataset, CocoStore, worker_init_fn."""

from mllib.loaders.cocodataset import *  # noqa: F403
from mllib.loaders.cocodataset import __all__  # noqa: F401
