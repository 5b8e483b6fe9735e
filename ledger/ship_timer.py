"""``ShipTimer``: when the ledger's shipper thread must wake, without it waking to ask.

The shipper makes sure every emitted event reaches the writer process within ``group_ms``.
While the runtime emits, the runtime's own thread ships (``Ledger._pack``) and pushes this
timer's next firing back each time; the shipper blocks on the timer's file descriptor and
wakes only when the runtime has not shipped for ``group_ms`` (it went quiet) or when asked
(``fire``: a flush, close, backpressure). Once a wake finds nothing at all, the shipper stops
the timer; the runtime's next event restarts it (``Ledger._go_quiet``). A shipper that woke
every ``group_ms`` to look took the GIL from the runtime's thread each time, and that thread
then slept until the shipper had been scheduled (bench/bench_core.py, issue 13).

A Linux timerfd through ctypes (Python 3.11 has no os.timerfd_*): ``create`` returns None where
there is none, and the ledger keeps its timed wait.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = 0o2000000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _spec(first_ns: int, every_ns: int) -> _Itimerspec:
    return _Itimerspec(_Timespec(every_ns // 1_000_000_000, every_ns % 1_000_000_000),
                       _Timespec(first_ns // 1_000_000_000, first_ns % 1_000_000_000))


class ShipTimer:
    """Fires every ``period_ns`` unless pushed back; ``wait`` blocks (without the GIL) until it
    has fired or been fired."""

    def __init__(self, fd: int, settime: ctypes._CFuncPtr, period_ns: int) -> None:
        self.fd = fd
        self._settime = settime
        self._period = ctypes.byref(_spec(period_ns, period_ns))
        self._now = ctypes.byref(_spec(1, period_ns))  # 1 ns: at once, then periodic again
        self._off = ctypes.byref(_spec(0, 0))
        self.closed = False

    @classmethod
    def create(cls, period_ns: int) -> ShipTimer | None:
        if period_ns <= 0:
            raise ValueError(f"period_ns must be positive, not {period_ns}")
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        create.argtypes, create.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        settime.restype = ctypes.c_int
        fd = create(_CLOCK_MONOTONIC, _TFD_CLOEXEC)
        if fd < 0:
            log.warning("ledger: no timerfd (%s): the shipper wakes every period",
                        os.strerror(ctypes.get_errno()))
            return None
        timer = cls(fd, settime, period_ns)
        timer.push()
        return timer

    def _set(self, spec: object) -> None:
        if not self.closed and self._settime(self.fd, 0, spec, None) != 0 and not self.closed:
            # (closed meanwhile by the ledger's close: nobody waits any more)
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def push(self) -> None:
        """The next firing one period from now (the runtime's thread just shipped)."""
        self._set(self._period)

    def stop(self) -> None:
        """No firing until the next ``push`` or ``fire`` (the runtime went quiet)."""
        self._set(self._off)

    def fire(self) -> None:
        """Wake the waiter at once."""
        self._set(self._now)

    def wait(self) -> int:
        """Block until the timer fires; the number of firings since the last wait."""
        return int.from_bytes(os.read(self.fd, 8), "little")

    def close(self) -> None:
        """Only once nobody waits on it (the shipper thread has ended)."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)
