"""The values a setting may take, said once and checked the same way for a script's flag (an argparse type) and a
library caller's argument (TrainConfig, CocoDataset, RecordsDataset, Augment): one line naming the setting.

    p.add_argument("--batch_size", type=Range(1))          # a usage error (exit 2) naming the flag
    Range(1).require("batch_size", value)                 # an MllibError naming the argument
"""

from __future__ import annotations

import argparse
import math
import numbers
import re

from mllib import UsageError


class Check:
    """problem(v): what is wrong with a value, or None. require(name, v): v, or an MllibError "<name> <problem>".
    As an argparse type: the flag's text parsed (parse) and checked, a bad value the script's usage error."""

    def problem(self, v) -> str | None:
        raise NotImplementedError

    def parse(self, text: str):
        return text

    def require(self, name: str, v):
        why = self.problem(v)
        if why:
            raise UsageError(f"{name} {why}")
        return v

    def __call__(self, text: str):
        try:
            v = self.parse(text)
        except ValueError:
            v = text  # problem() says what was wanted
        why = self.problem(v)
        if why:
            raise argparse.ArgumentTypeError(why)
        return v


class Range(Check):
    """lo <= v <= hi (an end is open where None; lo_open / hi_open exclude it), whole numbers (multiples of `step`)
    unless real=True, never NaN or infinite, never a bool."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, real: bool = False, step: int = 1):
        self.lo, self.hi, self.lo_open, self.hi_open, self.real, self.step = lo, hi, lo_open, hi_open, real, step

    def parse(self, text: str):
        return float(text) if self.real else int(text)

    def _wanted(self) -> str:
        kind = "a number" if self.real else f"a multiple of {self.step}" if self.step > 1 else "a whole number"
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            return f"{kind} from {self.lo} to {self.hi}"
        ends = [f"{'>' if self.lo_open else '>='} {self.lo}" if self.lo is not None else None,
                f"{'<' if self.hi_open else '<='} {self.hi}" if self.hi is not None else None]
        return " ".join([kind, " and ".join(e for e in ends if e)]).strip()

    def problem(self, v) -> str | None:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy's numbers too
            ok = False
        else:
            ok = math.isfinite(v) if self.real else isinstance(v, numbers.Integral) and v % self.step == 0
        if ok and self.lo is not None:
            ok = v > self.lo if self.lo_open else v >= self.lo
        if ok and self.hi is not None:
            ok = v < self.hi if self.hi_open else v <= self.hi
        return None if ok else f"must be {self._wanted()} (got {v!r})"


_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


class FolderName(Check):
    """A dataset, training-set or model name: a folder of the store (and of runs/), nested ones too (coco/small),
    nothing that climbs out of it."""

    _name = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")

    def problem(self, v) -> str | None:
        if isinstance(v, str) and self._name.fullmatch(v):
            return None
        return (f"must be a folder name: letters, digits, '.', '_' or '-', not starting with '.' or '-', '/' between "
                f"nested folders (got {v!r})")


SEED = Range(0, 2**32 - 1)  # what numpy, torch and TensorFlow all take as a seed (a flag's)
SEED64 = Range(0, 2**63 - 1)  # a dataset's seed, drawn into numpy's SeedSequence with (epoch, index)
SIZE = Range(1, 16384)  # an output height or width in pixels
NAME = FolderName()


def dtype(name: str, value, kinds: str, wanted: str, also=()):
    """numpy.dtype(value), or an MllibError "<name> must be <wanted>" when numpy does not know it or its kind is not
    one of `kinds` (numpy kind letters: 'f' float, 'i' / 'u' signed / unsigned integer) and it is not in `also`."""
    import numpy as np

    try:
        d = np.dtype(value)
    except TypeError:
        d = None
    if d is None or (d.kind not in kinds and d not in also):
        raise UsageError(f"{name} must be {wanted} (got {value!r})")
    return d


def setting(default, help: str, *, alias: bool = False, choices=None, check: Check | None = None,
            old: tuple[str, ...] = ()):
    """A dataclass field that is also a script's flag (mllib.cli.add_settings): its default, help, allowed values
    (`check`, `choices`), whether the seed's single-dash spelling (-name) is an alias of --name, and `old` names of
    the same setting (accepted as --old and -old, in --config files and in checkpoints; help lists the new name)."""
    import dataclasses

    return dataclasses.field(default=default, metadata={"help": help, "alias": alias, "choices": choices,
                                                        "check": check, "old": tuple(old)})
