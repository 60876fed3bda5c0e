"""Child processes that die with the process that started them (Linux PR_SET_PDEATHSIG), even by SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    # Loaded in the parent, once: between fork and exec the child may only make the call. Loading a
    # library there takes the loader's lock, which another thread may have held at the fork, and the
    # child would hang on it forever.
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return None


def die_with_parent(sig: signal.Signals, *, new_group: bool = False) -> Callable[[], None]:
    """A Popen preexec_fn: the child gets sig when its parent dies; new_group puts it in its own process group.

    Call it in the parent and pass the result; where prctl is unavailable only the group is set.
    """
    prctl = _prctl()

    def hook() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig)
        if new_group:
            os.setpgrp()

    return hook
