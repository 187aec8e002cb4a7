"""The values a setting may take, said once and checked the same way for a script's flag (an argparse type) and a
library caller's argument (TrainConfig, CocoDataset, RecordsDataset, Augment): one line naming the setting."""

from __future__ import annotations

import argparse
import math
import numbers
import re

from mllib import MllibError


class Range:
    """The values a numeric setting may take: lo <= v <= hi (an end is open where None; lo_open / hi_open exclude
    it), whole numbers (multiples of `step`) unless real=True, never NaN or infinite. As an argparse type it parses a flag, and a value
    outside is the script's usage error (exit 2) naming the flag; problem(v) says what is wrong with a value that
    came another way, require(name, v) raises it as an MllibError."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False, real: bool = False, step: int = 1):
        self.lo, self.hi, self.lo_open, self.hi_open, self.real, self.step = lo, hi, lo_open, hi_open, real, step

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

    def require(self, name: str, v):
        """v, or an MllibError "<name> must be ... (got v)"."""
        why = self.problem(v)
        if why:
            raise MllibError(f"{name} {why}")
        return v

    def __call__(self, text: str):
        try:
            v = float(text) if self.real else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self._wanted()} (got {text!r})") from None
        why = self.problem(v)
        if why:
            raise argparse.ArgumentTypeError(why)
        return v


SEED = Range(0, 2**32 - 1)  # what numpy, torch and TensorFlow all take as a seed (a flag's)
SIZE = Range(1, 16384)  # an output height or width in pixels

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")  # nested sets (coco/small) are folders too


def name_problem(v) -> str | None:
    """What is wrong with a dataset, training-set or model name (a folder of the store and of runs/), or None."""
    if isinstance(v, str) and _NAME.fullmatch(v):
        return None
    return (f"must be a folder name: letters, digits, '.', '_' or '-', not starting with '.' or '-', '/' between "
            f"nested folders (got {v!r})")


def require_name(what: str, v) -> str:
    why = name_problem(v)
    if why:
        raise MllibError(f"{what} {why}")
    return v


def folder_name(text: str) -> str:
    """An argparse type: a dataset, training-set or model name (see name_problem)."""
    why = name_problem(text)
    if why:
        raise argparse.ArgumentTypeError(why)
    return text
