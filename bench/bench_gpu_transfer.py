"""NIXL GPU -> GPU WRITE between two processes, against torch's peer copy of the same bytes in the
same run (issue 6: target >= 0.9 of the peer copy), plus a two-process data-path demo.

Needs a CUDA device and nixl-cu13. The parent (agent "ctx") owns GPU 0; a spawned child
(agent "gen") owns GPU 1, or GPU 0 too where there is one GPU (two processes on one GPU: UCX's
cuda_ipc maps the peer's memory on the same device, and "peer" below is a device-local copy).
Both register VRAM with NIXL (UCX's CUDA transports: default UCX_TLS,
NVLink between the two GPUs); metadata and commands go over a pipe. Agents run without NIXL's
progress thread by default (the poller drives UCX, as the runtime's transport does): on an H200 x2
host the thread cut the WRITE to 0.63-0.73 of the peer copy, without it 1.01-1.05.

Phase 1, bandwidth, per size (64 MiB, 256 MiB, 1 GiB by default), two interleaved rounds:
  peer      dst(GPU1)[:n].copy_(src(GPU0)[:n]) in the parent, synchronized, host-timed
  nixl      one WRITE of n bytes GPU0 -> GPU1 (ctx -> gen), posted and polled to DONE, host-timed
Both report n / time (bytes moved once). Then a fresh random pattern is written with a
notification; gen waits for the notification and checksums what it received (the Triton
checksum kernel); ctx compares with the checksums of its source: the data must be right.

Phase 2, data path: ctx packs 16 KV blocks (4 MiB bf16 each, odd order) from its pool into its
registered slot (Triton pack), records a DeviceFence, posts the WRITE only once the fence is
complete, and marks the slot reusable only when the fence is complete AND the transport said
DONE (Quiescence). gen waits for the notification, unpacks into other block ids of its own pool
(Triton unpack), fences, checksums the blocks and sends them back; ctx compares.

    python bench/bench_gpu_transfer.py [--json OUT.json] [--sizes-mib 64 256 1024]

Measured (2026-11-26, nixl-cu13 1.5.1, torch 2.11, NVLink NV18), NIXL WRITE / peer copy:
  H100 x2: 335.5 / 319.5, 384.5 / 379.4, 394.4 / 391.6 GB/s at 64 MiB / 256 MiB / 1 GiB
           (1.050, 1.013, 1.007), data correct; pipeline of 16 x 4 MiB blocks: pack 0.14 ms,
           WRITE 0.22 ms, unpack 0.26 ms, checksums equal.
  H200 x2: 1.048, 1.014, 1.007 without the progress thread; 0.630, 0.676, 0.679 with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time

import torch

BLOCK_SHAPE = (32, 2, 8, 32, 128)  # layers, K/V, kv heads, tokens, head dim (bf16: 4 MiB)
DEADLINE_S = 60.0


def _agent(name: str, prog_thread: bool = True):
    from nixl_cu13._api import nixl_agent, nixl_agent_config

    logging.getLogger("nixl").setLevel(logging.WARNING)
    return nixl_agent(name, nixl_agent_config(enable_prog_thread=prog_thread, backends=["UCX"]))


def _descs(agent, base: int, nbytes: int, dev: int, parts: int, mem: str):
    """``parts`` equal descriptors covering [base, base + nbytes) (one WRITE, several DMAs)."""
    step = nbytes // parts
    return agent.get_xfer_descs([(base + i * step, step if i < parts - 1 else nbytes - i * step,
                                  dev) for i in range(parts)], mem)


def _name(peer) -> str:
    # add_remote_agent returns bytes; notifications are keyed by the str name.
    return peer.decode() if isinstance(peer, bytes) else peer


def _recv(conn, proc=None):
    """A pipe message, or an error once the deadline passes or the peer process is gone."""
    end = time.monotonic() + DEADLINE_S
    while not conn.poll(0.5):
        if time.monotonic() > end or (proc is not None and not proc.is_alive()):
            raise RuntimeError("peer process gone or silent past the deadline")
    return conn.recv()


def _wait_notif(agent, peer: str, tag: bytes) -> None:
    end = time.monotonic() + DEADLINE_S
    while not agent.check_remote_xfer_done(peer, tag):
        if time.monotonic() > end:
            raise TimeoutError(f"no notification {tag!r} from {peer}")


def _gen(conn, dev_index: int, max_bytes: int, pool_blocks: int, prog_thread: bool) -> None:
    """The target process: GPU ``dev_index`` (-1: DRAM, the CPU smoke mode), agent "gen"."""
    from kvledger.cuda import ops
    from kvledger.cuda.quiescence import DeviceFence

    if dev_index >= 0:
        torch.cuda.set_device(dev_index)
        dev = torch.device("cuda", dev_index)
    else:
        dev = torch.device("cpu")
    agent = _agent("gen", prog_thread)
    slot = torch.full((max_bytes,), 0xEE, dtype=torch.uint8, device=dev)
    pool = torch.zeros((pool_blocks, *BLOCK_SHAPE), dtype=torch.bfloat16, device=dev)
    ops.unpack(slot, pool, [0])  # compile/load the kernels before anything is timed
    ops.block_checksums(pool, [0])
    agent.register_memory(slot)
    conn.send((agent.get_agent_metadata(), slot.data_ptr(), max(dev_index, 0)))
    peer = _name(agent.add_remote_agent(conn.recv()))
    while True:
        if not prog_thread:  # no progress thread: this process must drive its agent itself
            while not conn.poll(0):
                agent.update_notifs()
        cmd = conn.recv()
        if cmd[0] == "quit":
            break
        if cmd[0] == "checksum":  # wait for the WRITE's notification, then checksum what landed
            _, tag, nbytes, block_bytes = cmd
            _wait_notif(agent, peer, tag)
            blocks = slot[:nbytes].view(nbytes // block_bytes, block_bytes)
            conn.send(ops.block_checksums(blocks, list(range(nbytes // block_bytes))))
        elif cmd[0] == "unpack":
            _, tag, dst_ids = cmd
            _wait_notif(agent, peer, tag)
            t0 = time.perf_counter()
            ops.unpack(slot, pool, dst_ids)
            fence = DeviceFence.after(pool)
            fence.wait()
            t_unpack = time.perf_counter() - t0
            conn.send((ops.block_checksums(pool, dst_ids), t_unpack))
    agent.deregister_memory(agent.get_reg_descs(slot))


def _time_host(fn, sync, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def _write(agent, handle) -> None:
    state = agent.transfer(handle)
    end = time.monotonic() + DEADLINE_S
    while state == "PROC":
        state = agent.check_xfer_state(handle)
        if time.monotonic() > end:
            raise TimeoutError("WRITE still PROC past the deadline")
    if state != "DONE":
        raise RuntimeError(f"WRITE ended {state}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--descs", type=int, default=1, help="descriptors per WRITE")
    ap.add_argument("--prog-thread", action="store_true",
                    help="NIXL's own progress thread (default off: the poller drives progress, as "
                         "runtime/nixl_transport.py does; the thread cost 30%% of bandwidth here)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="DRAM instead of VRAM (checks the protocol on a CPU machine; no target)")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and torch.cuda.device_count() < 1:
        print("needs a CUDA device", file=sys.stderr)
        return 2
    from kvledger.cuda import ops
    from kvledger.cuda.quiescence import DeviceFence, Quiescence

    sizes = [m << 20 for m in args.sizes_mib]
    max_bytes = max(max(sizes), 16 * 4 << 20)
    if args.cpu_smoke:
        d0 = d1 = torch.device("cpu")
        card, mem, gen_index = "cpu (smoke)", "DRAM", -1
    else:
        gen_index = 1 if torch.cuda.device_count() > 1 else 0
        d0, d1 = torch.device("cuda", 0), torch.device("cuda", gen_index)
        card = f"{torch.cuda.get_device_name(d0)} x{torch.cuda.device_count()}" + (
            "" if gen_index else " (ctx and gen processes on the same GPU)")
        mem = "VRAM"
    src = torch.empty(max_bytes, dtype=torch.uint8, device=d0).random_(0, 256)
    peer_dst = torch.empty(max_bytes, dtype=torch.uint8, device=d1)

    def sync() -> None:
        if args.cpu_smoke:
            return
        torch.cuda.synchronize(d0)
        if d1 != d0:
            torch.cuda.synchronize(d1)

    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_gen, daemon=True,
                       args=(child_conn, gen_index, max_bytes, 64, args.prog_thread))
    proc.start()
    result: dict = {"card": card, "mem": mem, "descs": args.descs,
                    "prog_thread": args.prog_thread,
                    "ucx_env": {k: v for k, v in os.environ.items() if k.startswith("UCX_")},
                    "sizes": []}
    try:
        agent = _agent("ctx", args.prog_thread)
        agent.register_memory(src)
        gen_md, gen_addr, gen_dev = _recv(conn, proc)
        peer = _name(agent.add_remote_agent(gen_md))
        conn.send(agent.get_agent_metadata())

        # -- phase 1: bandwidth ------------------------------------------------------------
        for n in sizes:
            local = _descs(agent, src.data_ptr(), n, max(d0.index or 0, 0), args.descs, mem)
            remote = _descs(agent, gen_addr, n, gen_dev, args.descs, mem)
            handle = agent.initialize_xfer("WRITE", local, remote, peer, b"")
            for _ in range(3):  # warm-up: connection set-up, IPC handle mapping
                _write(agent, handle)
                peer_dst[:n].copy_(src[:n])
            peer_t, nixl_t = [], []
            for _ in range(2):
                peer_t += _time_host(lambda n=n: peer_dst[:n].copy_(src[:n]), sync, args.reps)
                nixl_t += _time_host(lambda h=handle: _write(agent, h), sync, args.reps)
            agent.release_xfer_handle(handle)
            # correctness: a fresh pattern, written with a notification, checksummed by gen.
            # The pattern is written by a kernel: the WRITE may read src only once that kernel is
            # done (a DeviceFence), or stale bytes travel (seen: the first run had no fence here).
            src[:n].random_(0, 256)
            DeviceFence.after(src).wait()
            tag = f"CHK{n}".encode()
            handle = agent.initialize_xfer("WRITE", local, remote, peer, tag)
            _write(agent, handle)
            agent.release_xfer_handle(handle)
            bb = 4 << 20
            conn.send(("checksum", tag, n, bb))
            got = _recv(conn, proc)
            want = ops.block_checksums(src[:n].view(n // bb, bb), list(range(n // bb)))
            row = {
                "bytes": n,
                "peer_GBps": n / statistics.median(peer_t) / 1e9,
                "nixl_GBps": n / statistics.median(nixl_t) / 1e9,
                "peer_ms_min_max": [min(peer_t) * 1e3, max(peer_t) * 1e3],
                "nixl_ms_min_max": [min(nixl_t) * 1e3, max(nixl_t) * 1e3],
                "data_correct": got == want,
            }
            row["nixl_vs_peer"] = row["nixl_GBps"] / row["peer_GBps"]
            result["sizes"].append(row)

        # -- phase 2: pack -> fence -> WRITE -> notif -> unpack -> checksum -----------------
        pool = torch.randint(-(2**31), 2**31 - 1, (64 * 2**20,), dtype=torch.int32,
                             device=d0).view(torch.bfloat16).view(64, *BLOCK_SHAPE)
        src_ids = [41, 3, 60, 17, 8, 33, 1, 52, 27, 12, 45, 6, 38, 21, 58, 30]
        dst_ids = [5, 62, 19, 0, 47, 26, 11, 54, 36, 2, 59, 14, 43, 23, 9, 31]
        ops.pack(pool, src_ids, src)  # warm-up: compile/load before timing
        sync()
        q = Quiescence("demo", "pack", slot=0)
        t0 = time.perf_counter()
        nbytes = ops.pack(pool, src_ids, src)
        fence = q.record_fence(src)
        while not fence.is_complete():  # the WRITE must not read the slot before the pack is done
            pass
        t_pack = time.perf_counter() - t0
        local = agent.get_xfer_descs(src[:nbytes])
        remote = agent.get_xfer_descs([(gen_addr, nbytes, gen_dev)], mem)
        handle = agent.initialize_xfer("WRITE", local, remote, peer, b"PIPE")
        q.expect_transport()
        assert not q.reusable()
        t0 = time.perf_counter()
        _write(agent, handle)
        t_write = time.perf_counter() - t0
        q.transport_terminal("DONE")
        agent.release_xfer_handle(handle)
        conn.send(("unpack", b"PIPE", dst_ids))
        got, t_unpack = _recv(conn, proc)
        result["pipeline"] = {
            "blocks": len(src_ids), "bytes": nbytes, "slot_reusable": q.reusable(),
            "checksums_match": got == ops.block_checksums(pool, src_ids),
            "pack_ms": t_pack * 1e3, "write_ms": t_write * 1e3, "unpack_ms": t_unpack * 1e3,
        }
        conn.send(("quit",))
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    result["gen_exit"] = proc.exitcode

    print(f"card: {card}; GB/s = bytes moved once / host-timed median")
    print(f"{'MiB':>6} {'peer':>8} {'nixl':>8} {'ratio':>7} {'correct':>8}")
    for r in result["sizes"]:
        print(f"{r['bytes'] >> 20:>6} {r['peer_GBps']:>8.1f} {r['nixl_GBps']:>8.1f} "
              f"{r['nixl_vs_peer']:>7.3f} {str(r['data_correct']):>8}")
    print("pipeline:", json.dumps(result["pipeline"]), "gen exit", result["gen_exit"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    ok = all(r["data_correct"] for r in result["sizes"]) and result["pipeline"]["checksums_match"]
    return 0 if ok and result["gen_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
