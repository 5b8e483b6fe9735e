"""The plain loops the runtime is measured against: the same bytes, the same work, no runtime.

``staged``: the staging path done by hand. Two spawned processes, each a raw NIXL agent (no
progress thread: the loop polls, as ``NixlTransport`` does) and the same ``KVDataPath`` the
Worker runs (the same pack, checksums, unpack). ctx packs a request's blocks into a free send
slot, checksums them, WRITEs the slot into the same-numbered receive slot of gen with a
notification carrying the request number and the checksums, and goes on to the next request
while gen, on that notification, unpacks into its blocks, checksums and compares, and hands the
slot back (a credit notification). ``slots`` slots on each side bound what is in flight. No
ledger, no lifecycle, no per-request advertise: what a minimal hand-written transfer loop does.

``blocks``: zero-copy, block to block. ctx WRITEs its request's KV blocks straight into gen's
blocks, with one descriptor per run of consecutive blocks on each side (the descriptor lists a
zero-copy runtime hands NIXL, as vLLM's connector does), a notification per request, and gen
hands the block set back by a credit notification; ``verify`` adds gen's checksums of the
received blocks against ctx's (sent in the notification), ``verify=False`` is plain NIXL.

Both return the seconds from the end of the first request (connection up) to the end of the
last one, as seen by gen, like the runtime's ledger timing.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from typing import Any

import torch

_SPAWN = mp.get_context("spawn")
START_TIMEOUT_S = 120.0


def _agent(name: str) -> Any:
    from nixl_cu13._api import nixl_agent, nixl_agent_config

    logging.getLogger("nixl").setLevel(logging.WARNING)
    return nixl_agent(name, nixl_agent_config(enable_prog_thread=False))


def _name(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _mem(t: torch.Tensor) -> tuple[str, int]:
    return ("VRAM", t.device.index or 0) if t.is_cuda else ("DRAM", 0)


def block_runs(ids: list[int]) -> list[tuple[int, int]]:
    """(first, count) per run of consecutive ids, in order."""
    out: list[tuple[int, int]] = []
    for b in ids:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


def _setup(cfg: dict, blocks: int, slots: int) -> tuple[Any, Any]:
    from kvledger.runtime.config import WorkerConfig
    from kvledger.runtime.datapath import KVDataPath

    c = WorkerConfig.from_dict(cfg)
    device = torch.device(c.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    pool = torch.zeros((blocks, c.layers, 2, c.kv_heads, c.block_tokens, c.head_dim),
                       dtype=getattr(torch, c.dtype), device=device)
    arena = torch.zeros((slots * c.slot_nbytes,), dtype=torch.uint8, device=device)
    return c, KVDataPath(pool, arena, c.slot_nbytes)


def _checksums(dp: Any) -> Any:
    """The data path's checksum of blocks in the pool (what ``pack``/``unpack`` return)."""
    if dp.host is not None:
        return dp.host.checksums
    from kvledger.cuda import ops

    return lambda ids: ops.block_checksums(dp.pool, ids)


class PlainCtx:
    """The sender: ``step()`` posts the next request when a slot is free and reaps handles."""

    def __init__(self, cfg: dict, mode: str, n: int, slots: int, verify: bool,
                 name: str = "plain-ctx") -> None:
        self.mode, self.n, self.verify = mode, n, verify
        per = cfg["max_request_blocks"]
        self.c, self.dp = _setup(cfg, per, slots)
        self.ids = list(range(per))
        self.dp.fill(tuple(self.ids), tuple(range(1, per + 1)))
        if self.dp.device.type == "cuda":
            torch.cuda.synchronize()
        self.agent = _agent(name)
        self.agent.register_memory(self.dp.pool)
        self.agent.register_memory(self.dp.arena)
        self.slots = slots
        self.credits = deque(range(slots))
        self.inflight: dict[int, Any] = {}
        self.i = 0
        self.checksums = _checksums(self.dp)

    def metadata(self) -> bytes:
        return self.agent.get_agent_metadata()

    def connect(self, gen_md: bytes, remote: Any) -> None:
        agent, dp, c = self.agent, self.dp, self.c
        self.gen = _name(agent.add_remote_agent(gen_md))
        mem, dev = _mem(dp.pool)
        bn, sn = c.block_nbytes, c.slot_nbytes
        nbytes = len(self.ids) * bn
        if self.mode == "staged":
            base = dp.arena.data_ptr()
            rbase, rdev = remote
            self.local = [agent.get_xfer_descs([(base + s * sn, nbytes, dev)], mem)
                          for s in range(self.slots)]
            self.remote = [agent.get_xfer_descs([(rbase + s * sn, nbytes, rdev)], mem)
                           for s in range(self.slots)]
        else:  # ctx's block runs -> each of gen's block sets, one descriptor per run
            pbase = dp.pool.data_ptr()
            rbase, rdev, sets = remote
            local = agent.get_xfer_descs([(pbase + b * bn, m * bn, dev)
                                          for b, m in block_runs(self.ids)], mem)
            self.local = [local] * self.slots
            self.remote = [agent.get_xfer_descs([(rbase + b * bn, m * bn, rdev)
                                                 for b, m in block_runs(ids)], mem)
                           for ids in sets]

    def done(self) -> bool:
        return self.i >= self.n and not self.inflight

    def step(self) -> int:
        """One turn; how much it did (0: nothing)."""
        agent = self.agent
        work = 0
        if not self.credits:
            for msgs in agent.get_new_notifs().values():
                self.credits.extend(int(m) for m in msgs)
        if self.credits and self.i < self.n:
            work += 1
            s = self.credits.popleft()
            tail = b""
            if self.mode == "staged":
                tail = ",".join(map(str, self.dp.pack(tuple(self.ids), s))).encode()
            elif self.verify:  # the blocks as they leave (the WRITE reads them)
                tail = ",".join(map(str, self.checksums(self.ids))).encode()
            h = agent.initialize_xfer("WRITE", self.local[s], self.remote[s], self.gen,
                                      b"%d %d " % (self.i, s) + tail)
            self.i += 1
            if agent.transfer(h) == "PROC":
                self.inflight[s] = h
            else:
                agent.release_xfer_handle(h)
        for s, h in list(self.inflight.items()):
            state = agent.check_xfer_state(h)
            if state != "PROC":
                assert state == "DONE", state
                agent.release_xfer_handle(h)
                del self.inflight[s]
                work += 1
        return work


class PlainGen:
    """The receiver: ``step()`` takes the notifications that arrived, unpacks (staged) or
    checks (blocks), verifies the checksums and hands the slot or block set back."""

    def __init__(self, cfg: dict, mode: str, n: int, slots: int, verify: bool,
                 name: str = "plain-gen") -> None:
        self.mode, self.n = mode, n
        per = cfg["max_request_blocks"]
        self.c, self.dp = _setup(cfg, per * slots, slots)
        self.sets = [list(range(k * per, (k + 1) * per)) for k in range(slots)]
        self.agent = _agent(name)
        self.agent.register_memory(self.dp.pool)
        self.agent.register_memory(self.dp.arena)
        self.checksums = _checksums(self.dp) if mode == "blocks" and verify else None
        self.ends: list[int] = []
        self.bad = 0

    def metadata(self) -> tuple[bytes, Any]:
        _, dev = _mem(self.dp.pool)
        bases = ((self.dp.arena.data_ptr(), dev) if self.mode == "staged"
                 else (self.dp.pool.data_ptr(), dev, self.sets))
        return self.agent.get_agent_metadata(), bases

    def connect(self, ctx_md: bytes) -> None:
        self.agent.add_remote_agent(ctx_md)

    def done(self) -> bool:
        return len(self.ends) >= self.n

    def step(self) -> int:
        """One turn; how much it did (0: nothing)."""
        work = 0
        for peer, msgs in self.agent.get_new_notifs().items():
            for m in msgs:
                work += 1
                _, s, tail = m.split(b" ", 2)
                s = int(s)
                want = tuple(int(x) for x in tail.split(b",")) if tail else None
                if self.mode == "staged":
                    got = self.dp.unpack(s, tuple(self.sets[s]))
                elif self.checksums is not None:
                    got = tuple(self.checksums(self.sets[s]))
                else:
                    got = want
                self.bad += got != want
                self.agent.send_notif(_name(peer), b"%d" % s)
                self.ends.append(time.monotonic_ns())
        return work


def _loop(side: Any) -> None:
    """Step until done, with the runtime worker loop's idle policy (runtime/procs.py): spin a
    while, then sleep-poll, so that on a shared box the loop does not take the cores the other
    side needs (a loop that only spins was 3-4x slower end to end on a busy 2-core box)."""
    from kvledger.runtime.procs import IDLE_POLL_S, IDLE_SPINS

    idle = 0
    while not side.done():
        idle = 0 if side.step() else idle + 1
        if idle >= IDLE_SPINS:
            time.sleep(IDLE_POLL_S)


def _ctx_main(conn: Any, cfg: dict, mode: str, n: int, slots: int, verify: bool,
              env: dict) -> None:
    os.environ.update(env)
    ctx = PlainCtx(cfg, mode, n, slots, verify)
    conn.send(ctx.metadata())
    ctx.connect(*conn.recv())
    conn.send("ready")
    assert conn.recv() == "go"
    _loop(ctx)
    conn.send("done")
    conn.recv()


def _gen_main(conn: Any, cfg: dict, mode: str, n: int, slots: int, verify: bool,
              env: dict) -> None:
    os.environ.update(env)
    gen = PlainGen(cfg, mode, n, slots, verify)
    gen.connect(conn.recv())
    conn.send(gen.metadata())
    _loop(gen)
    conn.send((gen.ends, gen.bad))
    conn.recv()


def run_inprocess(cfg: Any, n: int, *, mode: str = "staged", slots: int = 2,
                  verify: bool = True) -> dict[str, Any]:
    """Both sides in this process, stepped in turn on one thread: CPU seconds per request
    (``time.process_time``), immune to how busy a shared machine is. Timed from request 0's end."""
    d = cfg.to_dict()
    ctx = PlainCtx(d, mode, n + 1, slots, verify, name="plain-ctx-ip")
    gen = PlainGen(d, mode, n + 1, slots, verify, name="plain-gen-ip")
    gen.connect(ctx.metadata())
    ctx.connect(*gen.metadata())
    cpu0 = None
    while not (ctx.done() and gen.done()):
        ctx.step()
        gen.step()
        if cpu0 is None and gen.ends:
            cpu0 = time.process_time()
    cpu = time.process_time() - cpu0
    assert gen.bad == 0, f"{gen.bad} requests arrived with wrong checksums"
    for a in (ctx.agent, gen.agent):
        for t in (ctx.dp.pool, ctx.dp.arena) if a is ctx.agent else (gen.dp.pool, gen.dp.arena):
            a.deregister_memory(a.get_reg_descs(t))
    return {"cpu_s": cpu, "requests": n, "mode": mode, "slots": slots}


def run(cfg: Any, n: int, *, mode: str = "staged", slots: int = 2, verify: bool = True,
        env: dict | None = None, gen_device: str | None = None) -> dict[str, Any]:
    """``n`` requests of ``cfg.max_request_blocks`` blocks, plain; timed from request 0's end.
    ``cfg``: the ctx ``WorkerConfig`` (geometry, dtype, device); gen's device is the same unless
    ``gen_device`` says otherwise."""
    assert mode in ("staged", "blocks")
    d = cfg.to_dict()
    rest = (mode, n + 1, slots, verify, dict(env or {}))
    pc, cc = _SPAWN.Pipe()
    pg, cg = _SPAWN.Pipe()
    ctx = _SPAWN.Process(target=_ctx_main, args=(cc, d, *rest), daemon=True)
    gen = _SPAWN.Process(target=_gen_main, daemon=True,
                         args=(cg, {**d, "device": gen_device or d["device"]}, *rest))
    ctx.start()
    gen.start()
    try:
        pg.send(_recv(pc, ctx))
        pc.send(_recv(pg, gen))
        assert _recv(pc, ctx) == "ready"
        pc.send("go")
        assert _recv(pc, ctx) == "done"
        ends, bad = _recv(pg, gen)
        pc.send("bye")
        pg.send("bye")
    finally:
        for p in (ctx, gen):
            p.join(10)
            if p.is_alive():
                p.kill()
    assert bad == 0, f"{bad} requests arrived with wrong checksums"
    return {"seconds": (ends[-1] - ends[0]) / 1e9, "requests": n, "mode": mode,
            "slots": slots}


def _recv(conn: Any, proc: Any) -> Any:
    end = time.monotonic() + START_TIMEOUT_S
    while not conn.poll(0.2):
        if not proc.is_alive() or time.monotonic() > end:
            raise RuntimeError(f"plain loop process exited or went silent (exit {proc.exitcode})")
    return conn.recv()
