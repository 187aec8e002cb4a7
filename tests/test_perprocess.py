"""PerProcess: one value per process (clients, pools, slots), made again in a forked or unpickled copy."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import pickle

from mllib.perprocess import PerProcess

_counter = itertools.count()


def _make():
    return next(_counter)


def _in_child(pp, q):
    q.put((pp.made, pp.get(), pp.get()))


def test_made_once_per_process_and_again_after_fork_or_pickle():
    pp = PerProcess(_make)
    assert not pp.made
    first = pp.get()
    assert pp.made and pp.get() == first  # made once here
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_in_child, args=(pp, q))
    p.start()
    made, a, b = q.get(timeout=30)
    p.join(30)
    assert not made and a == b  # the child made its own, once (its counter continues from the parent's)
    assert a == first + 1
    copy = pickle.loads(pickle.dumps(pp))
    assert not copy.made and copy.get() == first + 1  # an unpickled copy has no value until asked
    pp.reset()
    assert not pp.made and pp.get() == first + 2
