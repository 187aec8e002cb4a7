"""The documented name of mllib.labels.classes: class dictionaries (load, ClassDictionary, ...)."""

from mllib.labels.classes import *  # noqa: F403
from mllib.labels.classes import __all__  # noqa: F401
