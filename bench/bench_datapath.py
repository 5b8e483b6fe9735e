"""Pack / unpack / checksum throughput on one GPU, against a plain device-to-device copy_ of the
same bytes in the same run (issue 6: target >= 0.8 of copy bandwidth for pack and unpack).

Blocks are realistic: 32 layers x 2 (K/V) x 8 KV heads x 32 tokens x 128 head dim, bf16 = 4 MiB.
For 16, 64 and 256 blocks (64 MiB .. 1 GiB) it times, with CUDA events (triton's do_bench,
median, L2 flushed between runs):
  copy      dst[:n].copy_(src[:n])                  the ceiling: one read + one write per byte
  pack      kvledger.cuda.ops.pack    (Triton)      gather listed blocks -> slot
  unpack    kvledger.cuda.ops.unpack  (Triton)      scatter slot -> listed blocks
  ref_pack  torch.index_select (ops.pack_torch)     the torch reference, for comparison
  ref_unpk  torch.index_copy_  (ops.unpack_torch)
  checksum  ops.block_checksums (Triton; includes its host sync)
Bandwidth counts bytes read + bytes written. Block ids are a random odd order over a pool twice
the size of the request, so a gather/scatter is never one contiguous run. Each result is also
checked bit for bit against the reference before it is timed.

    python bench/bench_datapath.py [--json OUT.json] [--blocks 16 64 256]

Measured (2026-11-26, torch 2.11, Triton 3.6), pack / unpack as a fraction of copy_:
  H100 80GB HBM3, final kernels:  copy_ 2659 / 2938 / 3001 GB/s at 16 / 64 / 256 blocks
    idle    0.918/0.917  0.937/0.936  0.954/0.954
    stream  0.903/0.875  0.947/0.947  0.943/0.935
    torch index_select 0.33 / 0.78 / 0.87, index_copy_ 0.41 / 0.42 / 0.44 (idle);
    checksum 0.7 / 1.0 / 1.7 TB/s read.
  H200, an earlier version (ids uploaded per call from a fresh pinned tensor): 64 and 256 blocks
    0.88-0.92 both modes; 16 blocks 0.65/0.86 idle, 0.48/0.53 stream: host-bound (~70 us of
    Python and launch per call against ~35 us of GPU time), which the pinned id ring fixed.
  H200, 2026-12-02 (issue 14), pack / unpack vs copy_ (copy_ 3636 / 4118 / 4221 GB/s):
    Triton launch, pinned ids read in place: idle 0.80/0.85 (16), 0.89/0.88, 0.91/0.90;
      stream 0.74/0.62 at 16 blocks (host-bound: 46-65 us of host per call);
    CUDA graph replay, ids read in place from pinned memory: 16 blocks 0.76/0.83 (each
      program's first load waits on a host read: ~8 us of a 40 us pack);
    CUDA graph replay with a device copy of the ids (final): idle 0.889/0.885, 0.892/0.887,
      0.914/0.900; stream 0.894/0.887, 0.919/0.917, 0.919/0.906 at 16 / 64 / 256 blocks.
    Fused pack + checksums (the runtime's call): 71 us at 16 blocks against 146 us for pack
      then checksum (copy_ 37 us); 205 / 633 us at 64 / 256 blocks (vs 320 / 927).
  H200, 2026-12-04 (issue 14's target >= 0.85 from 16 blocks up), pack / unpack vs copy_
    (copy_ 3740 / 4162 / 4246 GB/s idle): idle 0.868/0.864, 0.888/0.883, 0.914/0.901; stream
    0.852/0.864, 0.921/0.917, 0.922/0.908 at 16 / 64 / 256 blocks (met everywhere, narrowly at
    16 blocks in stream mode: ~40 us of host per call against a 36 us copy_). Fused pack +
    checksums 76 us at 16 blocks against 165 us for pack then checksum.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--sweep", action="store_true",
                    help="also time kernel configs (words per program x warps)")
    ap.add_argument("--sweep-blocks", type=int, default=None,
                    help="blocks for the sweep (default: the smallest of --blocks)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 2
    import triton.testing
    from kvledger.cuda import kernels, ops

    if not kernels.available():
        print("Triton kernels unavailable", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    shape = (args.layers, 2, args.heads, args.tokens, args.head_dim)
    max_n = max(args.blocks)
    pool_blocks = 2 * max_n
    g = torch.Generator(device=dev).manual_seed(0)
    pool = torch.randint(-(2**31), 2**31 - 1, (pool_blocks * torch.Size(shape).numel() // 2,),
                         dtype=torch.int32, device=dev, generator=g).view(torch.bfloat16)
    pool = pool.view(pool_blocks, *shape)
    bn = ops.block_nbytes(pool)
    slot = torch.empty(max_n * bn, dtype=torch.uint8, device=dev)
    copy_src = torch.empty(max_n * bn, dtype=torch.uint8, device=dev).random_(0, 256)
    copy_dst = torch.empty_like(copy_src)
    rng = random.Random(1)
    card = torch.cuda.get_device_name(dev)
    rows = []
    for n in args.blocks:
        ids = rng.sample(range(pool_blocks), n)
        dst_ids = rng.sample(range(pool_blocks), n)
        nbytes = n * bn
        # correctness on this exact input before timing
        ops.pack(pool, ids, slot)
        ref = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        ops.pack_torch(pool, ids, ref)
        assert torch.equal(slot[:nbytes], ref), "pack differs from reference"
        work = pool.clone()
        ops.unpack(slot, work, dst_ids)
        work_ref = pool.clone()
        ops.unpack_torch(slot, work_ref, dst_ids)
        assert torch.equal(work.view(torch.uint8), work_ref.view(torch.uint8)), "unpack differs"
        del work_ref
        assert ops.block_checksums(pool, ids[:4]) == ops.block_checksums_torch(pool, ids[:4])

        s, d = copy_src[:nbytes], copy_dst[:nbytes]
        fns = {
            "copy": lambda s=s, d=d: d.copy_(s),
            "pack": lambda ids=ids: ops.pack(pool, ids, slot),
            "unpack": lambda ids=dst_ids, w=work: ops.unpack(slot, w, ids),
            "ref_pack": lambda ids=ids: ops.pack_torch(pool, ids, slot),
            "ref_unpack": lambda ids=dst_ids, w=work: ops.unpack_torch(slot, w, ids),
            "checksum": lambda ids=ids: ops.block_checksums(pool, ids),
            # ids already on the device: the kernel alone, without the per-call id upload
            "pack_devids": lambda t=torch.tensor(ids, device=dev): ops.pack(pool, t, slot),
            "unpack_devids": lambda t=torch.tensor(dst_ids, device=dev), w=work:
                ops.unpack(slot, w, t),
            # every launch through Triton (no CUDA graph replay): the host cost graphs remove
            "pack_nograph": lambda ids=ids: _nograph(kernels, ops.pack, pool, ids, slot),
            "unpack_nograph": lambda ids=dst_ids, w=work:
                _nograph(kernels, ops.unpack, slot, w, ids),
            # the runtime's calls: pack + checksums / unpack + checksums in one fused launch
            "pack_fused": lambda ids=ids: ops.pack_checksums(pool, ids, slot),
            "unpack_fused": lambda ids=dst_ids, w=work: ops.unpack_checksums(slot, w, ids),
            # the fused kernel's other checksum form: one 64-bit multiply per word
            "pack_fused_mul": lambda ids=ids: _with(kernels, "FUSED_ROWSUM", False,
                                                    ops.pack_checksums, pool, ids, slot),
            "pack_then_checksum": lambda ids=ids: (ops.pack(pool, ids, slot),
                                                   ops.block_checksums(pool, ids)),
        }
        # Two modes, interleaved over two rounds so that drift shows up as spread, not as a ratio:
        #   idle    one call between two events, L2 flushed first (do_bench): includes any host
        #           overhead the flush does not hide;
        #   stream  K calls back to back between two events (throughput of a busy stream), and
        #           the host's launch cost per call (host_us).
        times: dict[str, list[float]] = {k: [] for k in fns}
        stream: dict[str, list[float]] = {k: [] for k in fns}
        host: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(2):
            for k, fn in fns.items():
                times[k].append(triton.testing.do_bench(fn, warmup=25, rep=200,
                                                        return_mode="median"))
                reps = max(10, int(20 / times[k][-1]))
                ms, us = _stream(fn, reps)
                stream[k].append(ms)
                host[k].append(us)
        row = {"blocks": n, "bytes": nbytes, "block_bytes": bn, "card": card}
        for k, ts in times.items():
            moved = nbytes if k == "checksum" else 2 * nbytes  # checksum reads only
            # (fused / pack_then_checksum: the bytes of the copy, the checksum's read not counted)
            ms = statistics.median(ts)
            row[f"{k}_ms"] = ms
            row[f"{k}_spread_ms"] = max(ts) - min(ts)
            row[f"{k}_GBps"] = moved / (ms * 1e-3) / 1e9
            sms = statistics.median(stream[k])
            row[f"{k}_stream_GBps"] = moved / (sms * 1e-3) / 1e9
            row[f"{k}_host_us"] = statistics.median(host[k])
        for k in fns:
            if k not in ("copy", "checksum"):
                row[f"{k}_stream_vs_copy"] = row[f"{k}_stream_GBps"] / row["copy_stream_GBps"]
                row[f"{k}_vs_copy"] = row[f"{k}_GBps"] / row["copy_GBps"]
        rows.append(row)
        del work
    print(f"card: {card}; block {bn / 2**20:.0f} MiB; bandwidth = bytes read + written (GB/s)")
    head = (f"{'blocks':>6} {'MiB':>6} {'copy':>7} {'pack':>7} {'unpack':>7} {'p/copy':>7} "
            f"{'u/copy':>7} {'idxsel':>7} {'idxcpy':>7} {'is/copy':>7} {'ic/copy':>7} {'cksum':>7}")
    print(head)
    for r in rows:
        print(f"{r['blocks']:>6} {r['bytes'] / 2**20:>6.0f} {r['copy_GBps']:>7.0f} "
              f"{r['pack_GBps']:>7.0f} {r['unpack_GBps']:>7.0f} {r['pack_vs_copy']:>7.3f} "
              f"{r['unpack_vs_copy']:>7.3f} {r['ref_pack_GBps']:>7.0f} "
              f"{r['ref_unpack_GBps']:>7.0f} {r['ref_pack_vs_copy']:>7.3f} "
              f"{r['ref_unpack_vs_copy']:>7.3f} {r['checksum_GBps']:>7.0f}")
    print("stream mode (K calls back to back): GB/s, ratio to copy_, host launch us/call")
    for r in rows:
        print(f"  {r['blocks']:>4} blocks: copy {r['copy_stream_GBps']:.0f} "
              f"pack {r['pack_stream_GBps']:.0f} ({r['pack_stream_vs_copy']:.3f}) "
              f"unpack {r['unpack_stream_GBps']:.0f} ({r['unpack_stream_vs_copy']:.3f}) "
              f"idxsel {r['ref_pack_stream_vs_copy']:.3f} "
              f"idxcpy {r['ref_unpack_stream_vs_copy']:.3f}"
              f" devids p/u {r['pack_devids_stream_vs_copy']:.3f}/"
              f"{r['unpack_devids_stream_vs_copy']:.3f}; host us: copy {r['copy_host_us']:.0f} "
              f"pack {r['pack_host_us']:.0f} unpack {r['unpack_host_us']:.0f} "
              f"devids {r['pack_devids_host_us']:.0f} nograph {r['pack_nograph_host_us']:.0f}")
    print("graphs off (every launch through Triton), idle/stream vs copy; fused (+checksums):")
    for r in rows:
        print(f"  {r['blocks']:>4} blocks: nograph p/u {r['pack_nograph_vs_copy']:.3f}/"
              f"{r['unpack_nograph_vs_copy']:.3f} stream {r['pack_nograph_stream_vs_copy']:.3f}/"
              f"{r['unpack_nograph_stream_vs_copy']:.3f}; fused p/u {r['pack_fused_ms']:.4f}/"
              f"{r['unpack_fused_ms']:.4f} ms (multiply form {r['pack_fused_mul_ms']:.4f}) vs "
              f"pack+checksum {r['pack_then_checksum_ms']:.4f} ms"
              f" (copy {r['copy_ms']:.4f} ms)")
    sweep_n = args.sweep_blocks or min(args.blocks)
    sweep = _sweep(pool, slot, copy_src, copy_dst, rng, sweep_n) if args.sweep else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "sweep": sweep}, f, indent=1)
    for mode, suffix in (("idle", ""), ("stream", "_stream")):
        ok = [r["blocks"] for r in rows
              if r[f"pack{suffix}_vs_copy"] >= 0.8 and r[f"unpack{suffix}_vs_copy"] >= 0.8]
        print(f"target >= 0.8 of copy for pack and unpack ({mode} mode): met at blocks {ok} "
              f"of {[r['blocks'] for r in rows]}")
    return 0


def _nograph(kernels, fn, *args):
    return _with(kernels, "GRAPHS", False, fn, *args)


def _with(module, name, value, fn, *args):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        return fn(*args)
    finally:
        setattr(module, name, saved)


def _stream(fn, reps: int) -> tuple[float, float]:
    """(device ms per call, host us per call) for ``reps`` calls back to back."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, (t1 - t0) / reps * 1e6


def _sweep(pool, slot, copy_src, copy_dst, rng, n) -> list[dict]:
    """Pack/unpack at several (words per program, warps) configs, n blocks, vs copy_."""
    import triton.testing
    from kvledger.cuda import kernels, ops

    bn = ops.block_nbytes(pool)
    nbytes = n * bn
    ids = torch.tensor(rng.sample(range(pool.shape[0]), n), device=pool.device)
    work = pool.clone()
    saved = kernels._COPY_WORDS, kernels._COPY_WARPS
    out = []
    try:
        copy_ms = triton.testing.do_bench(lambda: copy_dst[:nbytes].copy_(copy_src[:nbytes]),
                                          return_mode="median")
        for words in (2048, 4096, 8192, 16384, 32768):
            for warps in (4, 8, 16):
                kernels._COPY_WORDS, kernels._COPY_WARPS = words, warps
                p = triton.testing.do_bench(lambda: ops.pack(pool, ids, slot),
                                            return_mode="median")
                u = triton.testing.do_bench(lambda: ops.unpack(slot, work, ids),
                                            return_mode="median")
                out.append({"words": words, "warps": warps, "pack_vs_copy": copy_ms / p,
                            "unpack_vs_copy": copy_ms / u})
                print(f"  sweep words={words:>5} warps={warps:>2}: pack {copy_ms / p:.3f} "
                      f"unpack {copy_ms / u:.3f} of copy")
    finally:
        kernels._COPY_WORDS, kernels._COPY_WARPS = saved
    return out


if __name__ == "__main__":
    sys.exit(main())
