"""The sans-I/O lifecycle core: deterministic state machines, inputs in, effects and events out.

``states.py`` is the protocol (one table per side); ``machine.py`` the one door (``feed``) and
what both sides share; ``sender.py``/``receiver.py`` the actions the table names.

Nothing here does I/O, reads a clock, starts a thread or touches torch/NIXL (a lint test enforces
it): time arrives as ``now_ns`` on inputs, events leave through an injected ``emit`` callable, and
everything the driver must do comes back as effect dataclasses (``core.io``). The same core runs
under the live worker loop and under the replayer.
"""

from .io import (  # noqa: F401
    Arrive,
    Cancel,
    CancelResult,
    ControlIn,
    Fill,
    Fulfil,
    Pack,
    Packed,
    PeerLost,
    Poll,
    Polled,
    Posted,
    PostFailed,
    PostWrite,
    Release,
    SendControl,
    Shutdown,
    Tick,
    Unpack,
    Unpacked,
    WorkerError,
    XferState,
)
from .receiver import GenCore  # noqa: F401
from .sender import CtxCore  # noqa: F401
from .states import LifecycleError  # noqa: F401
