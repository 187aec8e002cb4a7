"""One value per process, made on first use: a boto3 client, an HTTP connection pool, a thread pool, a worker's
shared-memory slots. A DataLoader worker or pool process (forked or spawned) makes its own instead of using the
one it inherited from its parent, whose threads and sockets did not come along."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`make()` called once in each process that calls `get()`; thread-safe. Pickles without the value (`make`
    must pickle: a function, a functools.partial or a bound method)."""

    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._value: T | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    def get(self) -> T:
        pid = os.getpid()
        if self._pid != pid:
            if self._lock_pid != pid:  # a lock inherited through fork may be held by a thread that did not come
                self._lock, self._lock_pid = threading.Lock(), pid
            with self._lock:
                if self._pid != pid:
                    self._value, self._pid = self._make(), pid
        return self._value  # type: ignore[return-value]

    @property
    def made(self) -> bool:
        """Whether this process has made its value."""
        return self._pid == os.getpid()

    def reset(self) -> None:
        """Forget this process's value: the next get() makes a new one."""
        with self._lock:
            self._value, self._pid = None, None

    def __getstate__(self):
        return {"make": self._make}

    def __setstate__(self, state):
        self.__init__(state["make"])
