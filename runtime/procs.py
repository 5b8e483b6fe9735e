"""Worker processes: spawn, rendezvous, command channel, shutdown, kill/stall.

``spawn_peer`` starts a bare transport peer (a NIXL agent with one registered region that answers
commands over a pipe): the counterpart for transport tests and the plain-NIXL baseline of the
benchmark. Every child is started with the ``spawn`` method (no forked NIXL/UCX state) and gets
its environment (e.g. ``UCX_TLS``) before it creates its agent.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")


class PeerError(RuntimeError):
    """A peer process failed to answer a command (dead, stalled past the deadline, or raised)."""


def _peer_main(conn: Connection, name: str, env: dict[str, str], region_bytes: int,
               progress: str) -> None:
    os.environ.update(env)
    import torch

    from .nixl_transport import NixlTransport

    tr = NixlTransport(name, progress=progress)
    buf = torch.zeros(region_bytes, dtype=torch.uint8)
    tr.register("region", buf)
    conn.send(("ready", name, os.getpid(), tr.local_metadata(),
               tr.region_descriptor("region", 0, region_bytes)))
    inbox: list[tuple[str, bytes]] = []
    echo = False
    idle = 0
    while True:
        tr.progress()
        msgs = tr.poll_control()
        if msgs:
            idle = 0
            if echo:
                for peer, m in msgs:
                    tr.send_control(peer, m)
            else:
                inbox.extend(msgs)
        # Busy-poll while traffic flows; back off to 0.5 ms polls when idle (no spinning core).
        idle += 1
        if not conn.poll(0 if idle < 2000 else 0.0005):
            continue
        idle = 0
        cmd, *args = conn.recv()
        try:
            if cmd == "exit":
                tr.close()
                conn.send(("ok", None))
                return
            reply: Any = None
            if cmd == "add_peer":
                tr.add_peer(args[0], args[1])
            elif cmd == "read":
                off, n = args
                reply = bytes(buf[off:off + n].numpy().tobytes())
            elif cmd == "fill":
                off, n, value = args
                buf[off:off + n] = value
            elif cmd == "send":
                tr.send_control(args[0], args[1])
            elif cmd == "inbox":
                reply, inbox = inbox, []
            elif cmd == "echo":
                echo = bool(args[0])
            elif cmd == "stall":
                time.sleep(args[0])  # stop answering: no progress, no control
            elif cmd == "descriptor":
                reply = tr.region_descriptor("region", args[0], args[1])
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", reply))
        except Exception as exc:  # reported to the parent, who decides
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class PeerProcess:
    """Parent-side handle on a spawned transport peer."""

    name: str
    proc: Any
    conn: Connection
    pid: int
    metadata: bytes
    descriptor: bytes

    def call(self, cmd: str, *args: Any, timeout_s: float = 30.0) -> Any:
        self.conn.send((cmd, *args))
        if not self.conn.poll(timeout_s):
            raise PeerError(f"peer {self.name} did not answer {cmd!r} within {timeout_s} s")
        status, reply = self.conn.recv()
        if status != "ok":
            raise PeerError(f"peer {self.name}: {cmd}: {reply}")
        return reply

    def kill(self) -> None:
        """SIGKILL the peer (no cleanup: the fault under test)."""
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.is_alive():
            try:
                self.call("exit", timeout_s=timeout_s)
            except (PeerError, OSError, EOFError):
                pass
            self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()


def spawn_peer(name: str, *, region_bytes: int = 1 << 20, env: dict[str, str] | None = None,
               progress: str = "poll", start_timeout_s: float = 60.0) -> PeerProcess:
    parent, child = _SPAWN.Pipe()
    proc = _SPAWN.Process(target=_peer_main, name=f"kvledger-peer-{name}",
                          args=(child, name, dict(env or {}), region_bytes, progress),
                          daemon=True)
    proc.start()
    child.close()
    if not parent.poll(start_timeout_s):
        proc.kill()
        raise PeerError(f"peer {name} did not start within {start_timeout_s} s")
    tag, got_name, pid, md, desc = parent.recv()
    assert tag == "ready" and got_name == name
    return PeerProcess(name, proc, parent, pid, md, desc)
