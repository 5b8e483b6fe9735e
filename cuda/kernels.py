"""GPU kernels for the KV data path: pack, unpack and per-block checksums, written in Triton.

Why Triton rather than a CUDA extension through ``torch.utils.cpp_extension``: the work is a pure
memory-bound gather/scatter of whole blocks (each block one contiguous run of bytes, block-major
pool), where Triton's generated loads are already 16 bytes wide and coalesced, so CUDA C++ would
buy nothing measurable; and Triton ships inside torch's CUDA wheels, so nothing is compiled at
install time (no nvcc, no build cache per torch version), and the same source runs on the CPU
under ``TRITON_INTERPRET=1`` for debugging. Kernels are compiled on first use per shape class.

Why a kernel at all: ``index_select`` (pack) already reaches ~0.95 of ``copy_`` bandwidth on an
H100, but ``index_copy_`` (unpack) only ~0.46. Here both directions are the same kernel: program
``(c, b)`` copies chunk ``c`` of the ``b``-th listed block, with the block id read from a device
tensor, so a scatter costs exactly what a gather costs (one read and one write of each byte).

Bytes are moved as 32-bit words (a reinterpreting view, never a conversion), so results are
bit-identical to the torch reference for every dtype, NaN payloads included. The checksum is the
reference's integer formula (``ops.CHECKSUM_ROW_WORDS``), wrapping int64 sums: identical values.

Everything here expects CUDA tensors and is reached through ``kvledger.cuda.ops``, which falls
back to torch where ``available()`` is False or a tensor's layout does not fit (see ``supports``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

try:  # Triton is in torch's CUDA wheels; CPU-only installs (CI) run the torch reference instead.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

# Words per program for pack/unpack: 64 KiB per program keeps thousands of programs in flight for a
# 4 MiB block while each thread issues several 16-byte loads before its first store.
_COPY_WORDS = 16384
_COPY_WARPS = 16  # 16 warps: +2-3% over 8 at 1 GiB on an H200 (sweep in bench_datapath)
# The fused copy+checksum kernel's checksum: row sums then one multiply per row (True), or one
# 64-bit multiply per word (False). Measured with bench_datapath (pack_fused / _rows).
FUSED_ROWSUM = os.environ.get("KVLEDGER_FUSED_ROWSUM", "1") != "0"
# Words per inner tile of the checksum (sums wrap modulo 2**64 by definition: no size limit).
_SUM_TILE = 1024


@functools.cache
def available() -> bool:
    """True when Triton is importable and a CUDA device is present."""
    return triton is not None and torch.cuda.is_available()


def _block_bytes(pool: torch.Tensor) -> int:
    # Pure Python on the shape: indexing the tensor (pool[0]) would cost a torch op per call.
    return math.prod(pool.shape[1:]) * pool.element_size()


def supports(pool: torch.Tensor, slot: torch.Tensor | None = None) -> bool:
    """True when the kernels can run on these tensors (else ops uses the torch path).

    Cheap on purpose (attribute reads only): it runs on every call, and at 64 MiB a pack's whole
    GPU time is ~35 us, so host overhead per call decides small-request throughput.
    """
    if not pool.is_cuda or not available() or pool.dim() < 1 or not pool.is_contiguous() \
            or pool.data_ptr() % 4 or _block_bytes(pool) % 4:
        return False
    if slot is not None:
        # The slot is a flat uint8 tensor; its front must be addressable as 32-bit words.
        if slot.device != pool.device or not slot.is_contiguous() or slot.data_ptr() % 4:
            return False
    return True


class _IdRing:
    """Hands block-id lists to the kernels without a stream sync or an allocation per call.

    A copy from pageable memory would synchronize the stream (CUDA stages it), and a fresh pinned
    tensor plus an upload cost ~45 us of host time per call, more than the whole GPU time of a
    64 MiB pack (~35 us on an H200). Instead: ``SLOTS`` fixed rows of pinned host memory. Small
    launches read their row in place (zero-copy over UVA: each program loads one 8-byte id),
    which saves the upload's host time where host time decides; large launches (more than
    ``ZERO_COPY_PROGRAMS`` programs) get the row copied to a device row first (asynchronous
    ``copy_`` from pinned memory), because thousands of programs each waiting on a host read
    cost 20-25% of bandwidth at 256 MiB and more (H100, measured). Each call takes the next row
    after waiting on the event recorded behind that row's last use, long done unless the stream
    is ``SLOTS`` calls behind. If zero-copy is refused (probed once per device), every launch
    uploads.
    Rows are handed out under a lock; two threads would have to interleave ``SLOTS`` calls
    between one call's hand-out and its ``done`` to share a row.
    """

    SLOTS = 64
    WIDTH = 4096  # ids per launch; longer lists are launched in chunks
    ZERO_COPY_PROGRAMS = 2048  # about two waves of 16-warp programs on an H100

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host = torch.empty((self.SLOTS, self.WIDTH), dtype=torch.int64, pin_memory=True)
        self.host_np = self.host.numpy()
        self.host_rows = list(self.host.unbind(0))
        self.events = [torch.cuda.Event() for _ in range(self.SLOTS)]
        self.used = [False] * self.SLOTS
        self.next = 0
        self.lock = threading.Lock()
        dev = torch.empty((self.SLOTS, self.WIDTH), dtype=torch.int64, device=device)
        self.dev_rows = list(dev.unbind(0))
        self.zero_copy = self._zero_copy_works()
        if not self.zero_copy:
            log.info("kvledger.cuda: kernels cannot read pinned memory in place on %s; "
                     "uploading block ids instead", device)

    def _zero_copy_works(self) -> bool:
        probe = torch.arange(8, dtype=torch.int32, device=self.device).view(8, 1)
        out = torch.full((3,), -1, dtype=torch.int32, device=self.device)
        self.host_np[0, :3] = [6, 1, 4]
        try:
            _copy_blocks_kernel[(1, 3)](probe, out, self.host_rows[0], 1, 0, SCATTER=False,
                                        BLOCK=16, num_warps=1)
            return out.tolist() == [6, 1, 4]
        except Exception as exc:  # Triton refuses host pointers it cannot map
            log.debug("zero-copy probe failed: %s", exc)
            return False

    def take(self, ids: list[int], programs: int) -> tuple[torch.Tensor, int]:
        """(ids readable by a kernel on the current stream, row); ``done(row)`` after launch."""
        n = len(ids)
        with self.lock:
            row = self.next
            self.next = (row + 1) % self.SLOTS
            if self.used[row]:
                self.events[row].synchronize()  # the row's last kernel has finished
                self.used[row] = False
        self.host_np[row, :n] = ids
        if self.zero_copy and programs <= self.ZERO_COPY_PROGRAMS:
            return self.host_rows[row], row
        out = self.dev_rows[row][:n]
        out.copy_(self.host_rows[row][:n], non_blocking=True)
        return out, row

    def done(self, row: int) -> None:
        self.events[row].record()  # current stream of the current (= pool's) device
        self.used[row] = True


_RINGS: dict[torch.device, _IdRing] = {}


def _id_chunks(block_ids: Sequence[int], num_blocks: int, device: torch.device,
               programs_per_block: int) -> Iterator[tuple[int, torch.Tensor, int]]:
    """(first, ids readable on ``device``, count) per launch; a launch after each yield."""
    if isinstance(block_ids, torch.Tensor):
        if block_ids.device == device and block_ids.dtype == torch.int64:
            # Already on the device (the caller keeps ids there); a range check would need a
            # sync, so it is the caller's duty here.
            flat = block_ids.reshape(-1)
            for first in range(0, flat.numel(), _IdRing.WIDTH):
                chunk = flat[first:first + _IdRing.WIDTH]
                yield first, chunk, chunk.numel()
            return
        block_ids = block_ids.tolist()
    ids = block_ids if isinstance(block_ids, list) else list(block_ids)
    # Out-of-range ids would be a wild write on the GPU: check on the host, where it is cheap.
    if ids and (min(ids) < 0 or max(ids) >= num_blocks):
        raise IndexError(f"block id out of range [0, {num_blocks})")
    if device.type != "cuda":  # the Triton interpreter (TRITON_INTERPRET=1) runs on CPU tensors
        for first in range(0, len(ids), _IdRing.WIDTH):
            chunk = ids[first:first + _IdRing.WIDTH]
            yield first, torch.tensor(chunk, dtype=torch.int64), len(chunk)
        return
    ring = _ring(device)
    for first in range(0, len(ids), _IdRing.WIDTH):
        chunk = ids[first:first + _IdRing.WIDTH] if len(ids) > _IdRing.WIDTH else ids
        t, row = ring.take(chunk, len(chunk) * programs_per_block)
        yield first, t, len(chunk)
        ring.done(row)



# CUDA graphs for the per-request launches: a Triton launch costs tens of microseconds of host
# time (argument binding, specialization key, cache lookup) against ~35 us of GPU time for a
# 64 MiB pack on an H200, so at small sizes the host, not the copy, set the pace. A graph
# replay of the same launch costs a few microseconds. One graph per (kernel, pointers, grid,
# constants) and row: the graph copies the row's pinned block ids (written just before the
# replay, once the row's previous replay has finished) to a device row, then launches the
# kernel on those. Device ids, not ids read in place from pinned memory: every program's first
# load waiting on a host read cost ~8 us of a 40 us pack of 16 x 4 MiB on an H200 (0.76 of
# copy_ instead of 0.92); the graph's small copy costs a couple.
# Off with KVLEDGER_CUDA_GRAPHS=0 (then every launch goes through Triton as before).
GRAPHS = os.environ.get("KVLEDGER_CUDA_GRAPHS", "1") != "0"
GRAPH_KEYS_MAX = 64  # launch shapes kept (a worker has a few: slots x request sizes)


class _GraphEntry:
    __slots__ = ("graphs", "ids_np", "events", "used", "next", "out")

    def __init__(self) -> None:
        self.graphs: list = []
        self.ids_np: list = []
        self.events: list = []
        self.used: list[bool] = []
        self.next = 0
        self.out: list = []  # per row: the output buffer the graph writes (checksum partials)


class _Graphs:
    """Captured launches of one device (see GRAPHS). ``run`` replays, capturing on first use;
    a shape that cannot be captured is remembered and launched through Triton from then on."""

    ROWS = 4

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.entries: OrderedDict[tuple, _GraphEntry] = OrderedDict()
        self.refused: set[tuple] = set()
        # Shapes launched once through Triton: the kernel is compiled and loaded (a capture
        # must not compile: loading a module is no stream work) before its first capture.
        self.seen: set[tuple] = set()
        self.lock = threading.Lock()

    def run(self, key: tuple, ids: list[int], launch: Callable[[torch.Tensor, object], None],
            make_out: Callable[[], object] | None = None) -> object | bool:
        """Replay ``launch(ids_tensor, out)`` for these ids; returns the row's ``out`` (or True)
        once queued on the current stream, False where the caller launches through Triton (a
        shape's first call, or one that could not be captured)."""
        if key in self.refused:
            return False
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                if key not in self.seen:
                    self.seen.add(key)
                    if len(self.seen) > 4 * GRAPH_KEYS_MAX:
                        self.seen.clear()
                    return False
                entry = self._capture(key, len(ids), launch, make_out)
                if entry is None:
                    return False
            self.entries.move_to_end(key)
            row = entry.next
            entry.next = (row + 1) % self.ROWS
            if entry.used[row]:
                entry.events[row].synchronize()  # the row's last replay has read its ids
        entry.ids_np[row][:len(ids)] = ids
        entry.graphs[row].replay()
        entry.events[row].record()
        entry.used[row] = True
        out = entry.out[row]
        return True if out is None else out

    def _capture(self, key: tuple, n: int, launch: Callable[[torch.Tensor, object], None],
                 make_out: Callable[[], object] | None) -> _GraphEntry | None:
        entry = _GraphEntry()
        dev = self.device
        current = torch.cuda.current_stream(dev)
        side = torch.cuda.Stream(dev)
        try:
            for _ in range(self.ROWS):
                host = torch.zeros(n, dtype=torch.int64, pin_memory=True)
                ids = torch.zeros(n, dtype=torch.int64, device=dev)
                out = make_out() if make_out is not None else None
                side.wait_stream(current)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.stream(side):
                    g.capture_begin()
                    try:
                        ids.copy_(host, non_blocking=True)
                        launch(ids, out)
                    finally:
                        g.capture_end()
                current.wait_stream(side)
                entry.graphs.append(g)
                entry.ids_np.append(host.numpy())
                entry.events.append(torch.cuda.Event())
                entry.used.append(False)
                entry.out.append(out)
        except Exception as exc:  # noqa: BLE001 - any capture failure: launch as before
            log.warning("kvledger.cuda: no CUDA graph for %s (%s); launching through Triton",
                        key[0], exc)
            torch.cuda.synchronize(dev)
            self.refused.add(key)
            return None
        self.entries[key] = entry
        while len(self.entries) > GRAPH_KEYS_MAX:
            _, old = self.entries.popitem(last=False)
            for event, used in zip(old.events, old.used, strict=True):
                if used:
                    event.synchronize()  # its pinned ids are freed with it
        return entry


_GRAPHS: dict[torch.device, _Graphs] = {}


def _ring(device: torch.device) -> _IdRing:
    ring = _RINGS.get(device)
    if ring is None:
        ring = _RINGS.setdefault(device, _IdRing(device))
    return ring


def _graphs_for(pool: torch.Tensor, block_ids: Sequence[int]) -> _Graphs | None:
    """The device's graph cache where a call may replay: graphs on, a CUDA pool, a host id list
    that fits one launch (range-checked by the caller)."""
    if not GRAPHS or pool.device.type != "cuda" or isinstance(block_ids, torch.Tensor) \
            or not 0 < len(block_ids) <= _IdRing.WIDTH:
        return None
    g = _GRAPHS.get(pool.device)
    if g is None:
        g = _GRAPHS.setdefault(pool.device, _Graphs(pool.device))
    return g


def _check_ids(ids: list[int], num_blocks: int) -> None:
    if ids and (min(ids) < 0 or max(ids) >= num_blocks):
        raise IndexError(f"block id out of range [0, {num_blocks})")

if triton is not None:

    @triton.jit
    def _copy_blocks_kernel(src_ptr, dst_ptr, ids_ptr, words_per_block, first,
                            SCATTER: tl.constexpr, BLOCK: tl.constexpr):
        # Any element type in, 32-bit words moved: a pointer cast, not a value conversion (the
        # caller checked that both bases are 4-byte aligned and blocks are whole words).
        src_ptr = src_ptr.to(tl.pointer_type(tl.int32))
        dst_ptr = dst_ptr.to(tl.pointer_type(tl.int32))
        c = tl.program_id(0)
        b = tl.program_id(1)
        blk = tl.load(ids_ptr + b)  # int64: pool offsets exceed 2**31 words on large pools
        offs = c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < words_per_block
        packed = (b.to(tl.int64) + first) * words_per_block + offs
        pooled = blk * words_per_block + offs
        if SCATTER:
            v = tl.load(src_ptr + packed, mask=mask, eviction_policy="evict_first")
            tl.store(dst_ptr + pooled, v, mask=mask, cache_modifier=".cs")
        else:
            v = tl.load(src_ptr + pooled, mask=mask, eviction_policy="evict_first")
            tl.store(dst_ptr + packed, v, mask=mask, cache_modifier=".cs")

    @triton.jit
    def _copy_sum_kernel(src_ptr, dst_ptr, ids_ptr, part_ptr, words_per_block, chunks, first,
                         SCATTER: tl.constexpr, WIDE: tl.constexpr, ROW: tl.constexpr,
                         LOG2_ROW: tl.constexpr, ROWSUM: tl.constexpr, BLOCK: tl.constexpr):
        # pack/unpack and the checksum of what is moved, in one pass: each program copies
        # chunk c of the b-th listed block and writes that chunk's partial checksum (wrapping
        # int64 sum of word * (2 * (i // ROW) + 1), i the word's index in its block); the host
        # adds a block's partials. The words are the checksum's own (64-bit where the block is
        # a multiple of 8 bytes, else 32-bit, sign-extended), so the copy is still a bit copy.
        if WIDE:
            src_ptr = src_ptr.to(tl.pointer_type(tl.int64))
            dst_ptr = dst_ptr.to(tl.pointer_type(tl.int64))
        else:
            src_ptr = src_ptr.to(tl.pointer_type(tl.int32))
            dst_ptr = dst_ptr.to(tl.pointer_type(tl.int32))
        c = tl.program_id(0)
        b = tl.program_id(1)
        blk = tl.load(ids_ptr + b)
        offs = c.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < words_per_block
        packed = (b.to(tl.int64) + first) * words_per_block + offs
        pooled = blk * words_per_block + offs
        if SCATTER:
            v = tl.load(src_ptr + packed, mask=mask, other=0, eviction_policy="evict_first")
            tl.store(dst_ptr + pooled, v, mask=mask, cache_modifier=".cs")
        else:
            v = tl.load(src_ptr + pooled, mask=mask, other=0, eviction_policy="evict_first")
            tl.store(dst_ptr + packed, v, mask=mask, cache_modifier=".cs")
        if ROWSUM:
            # Row sums first (adds only), then one multiply per row: 1/ROW of the multiplies.
            rows = tl.sum(tl.reshape(v.to(tl.int64), (BLOCK // ROW, ROW)), axis=1)
            k = c * (BLOCK // ROW) + tl.arange(0, BLOCK // ROW)  # int32: rows of this chunk
            acc = tl.zeros((1,), dtype=tl.int64) + tl.sum(rows * (2 * k + 1).to(tl.int64),
                                                          axis=0)
        else:
            # The row index in 32-bit arithmetic (a block has < 2**31 words; ROW is a power of
            # two): no 64-bit division per word.
            i = c * BLOCK + tl.arange(0, BLOCK)
            w = ((i >> LOG2_ROW) * 2 + 1).to(tl.int64)
            acc = tl.zeros((1,), dtype=tl.int64) + tl.sum(v.to(tl.int64) * w, axis=0)
        tl.store(part_ptr + (b.to(tl.int64) + first) * chunks + c + tl.arange(0, 1), acc)

    @triton.jit
    def _checksum_kernel(pool_ptr, ids_ptr, part_ptr, words_per_block, chunks, first,
                         ROW: tl.constexpr, WIDE: tl.constexpr, CHUNK: tl.constexpr,
                         TILE: tl.constexpr):
        # Partial checksum of one CHUNK of one block: sum of word * (2 * (i // ROW) + 1), all
        # wrapping int64 (see ops.CHECKSUM_ROW_WORDS); the host adds the partials, also wrapping.
        if WIDE:
            pool_ptr = pool_ptr.to(tl.pointer_type(tl.int64))
        else:
            pool_ptr = pool_ptr.to(tl.pointer_type(tl.int32))
        c = tl.program_id(0)
        b = tl.program_id(1)
        blk = tl.load(ids_ptr + b)
        base = blk * words_per_block
        acc = tl.zeros((1,), dtype=tl.int64)  # shape (1,): a loop-carried int64
        for t in range(0, CHUNK, TILE):
            i = c.to(tl.int64) * CHUNK + t + tl.arange(0, TILE)
            mask = i < words_per_block
            w = tl.load(pool_ptr + base + i, mask=mask, other=0).to(tl.int64)
            prod = tl.where(mask, w * (2 * (i // ROW) + 1), 0)
            acc += tl.sum(prod, axis=0)
        tl.store(part_ptr + (b.to(tl.int64) + first) * chunks + c + tl.arange(0, 1), acc)


def _current(t: torch.Tensor):
    """Make ``t``'s device current: Triton launches on the current device's current stream,
    whatever device the tensors are on (a no-op in the usual one-device-per-process case)."""
    if t.device.type != "cuda" or t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def _copy(src: torch.Tensor, dst: torch.Tensor, pool: torch.Tensor, block_ids: Sequence[int],
          scatter: bool) -> None:
    wpb = _block_bytes(pool) // 4
    programs = (wpb + _COPY_WORDS - 1) // _COPY_WORDS
    graphs = _graphs_for(pool, block_ids)
    if graphs is not None:
        ids = list(block_ids)
        _check_ids(ids, pool.shape[0])
        n = len(ids)

        def launch(t: torch.Tensor, _out: object) -> None:
            _copy_blocks_kernel[(programs, n)](src, dst, t, wpb, 0, SCATTER=scatter,
                                               BLOCK=_COPY_WORDS, num_warps=_COPY_WARPS)

        key = ("copy", scatter, src.data_ptr(), dst.data_ptr(), n, wpb, _COPY_WORDS,
               _COPY_WARPS)
        if graphs.run(key, ids, launch):
            return
    for first, ids, n in _id_chunks(block_ids, pool.shape[0], pool.device, programs):
        _copy_blocks_kernel[(programs, n)](src, dst, ids, wpb, first, SCATTER=scatter,
                                           BLOCK=_COPY_WORDS, num_warps=_COPY_WARPS)


def pack(pool: torch.Tensor, block_ids: Sequence[int], slot: torch.Tensor, nbytes: int) -> None:
    """Gather ``pool[block_ids]`` into ``slot[:nbytes]`` on the current stream."""
    with _current(pool):
        _copy(pool, slot, pool, block_ids, scatter=False)


def unpack(slot: torch.Tensor, pool: torch.Tensor, block_ids: Sequence[int], nbytes: int) -> None:
    """Scatter ``slot[:nbytes]`` into ``pool[block_ids]`` on the current stream.

    A block id listed twice gets one of its source blocks (unspecified which), as with
    ``index_copy_``; the runtime never lists a destination block twice.
    """
    with _current(pool):
        _copy(slot, pool, pool, block_ids, scatter=True)


def copy_with_checksums(src: torch.Tensor, dst: torch.Tensor, pool: torch.Tensor,
                        block_ids: Sequence[int], scatter: bool) -> list[int] | None:
    """pack (``scatter=False``: pool -> slot) or unpack (slot -> pool) on the current stream AND
    the reference checksum of each listed block as moved, in one launch and one pass over the
    bytes (the separate checksum kernel reads them all again); synchronizes (host integers).
    None, with nothing moved, where a 64-bit word layout meets a base that is not 8-aligned
    (the caller then copies and checksums separately). A destination block listed twice gets
    one of its sources, and each listed position reports its own source's checksum."""
    from kvledger.cuda.ops import checksum_layout

    word, wpb, row = checksum_layout(_block_bytes(pool))
    wide = word is torch.int64
    if wide and (src.data_ptr() % 8 or dst.data_ptr() % 8):
        return None
    block = _COPY_WORDS // 2 if wide else _COPY_WORDS  # the same bytes per program as _copy
    chunks = (wpb + block - 1) // block
    log2_row = row.bit_length() - 1
    assert 1 << log2_row == row and wpb < 2**31, "checksum rows are a power of two of words"
    n = len(block_ids)
    with _current(pool):
        graphs = _graphs_for(pool, block_ids)
        if graphs is not None:
            host_ids = list(block_ids)
            _check_ids(host_ids, pool.shape[0])

            def launch(t: torch.Tensor, out: object) -> None:
                _copy_sum_kernel[(chunks, n)](src, dst, t, out, wpb, chunks, 0, SCATTER=scatter,
                                              WIDE=wide, ROW=row, LOG2_ROW=log2_row,
                                              ROWSUM=FUSED_ROWSUM, BLOCK=block,
                                              num_warps=_COPY_WARPS)

            def make_out() -> torch.Tensor:
                return torch.empty((n, chunks), dtype=torch.int64, device=pool.device)

            key = ("copy_sum", scatter, src.data_ptr(), dst.data_ptr(), n, wpb, block, row,
                   FUSED_ROWSUM, _COPY_WARPS)
            part = graphs.run(key, host_ids, launch, make_out)
            if part is not False:
                return [int(x) for x in part.sum(dim=1).tolist()]
        part = torch.empty((n, chunks), dtype=torch.int64, device=pool.device)
        for first, ids, cnt in _id_chunks(block_ids, pool.shape[0], pool.device, chunks):
            _copy_sum_kernel[(chunks, cnt)](src, dst, ids, part, wpb, chunks, first,
                                            SCATTER=scatter, WIDE=wide, ROW=row,
                                            LOG2_ROW=log2_row, ROWSUM=FUSED_ROWSUM,
                                            BLOCK=block, num_warps=_COPY_WARPS)
        return [int(x) for x in part.sum(dim=1).tolist()]


def supports_checksum(pool: torch.Tensor) -> bool:
    return supports(pool)


def block_checksums(pool: torch.Tensor, block_ids: Sequence[int]) -> list[int]:
    """The reference checksum of each listed block (synchronizes: returns host integers)."""
    with _current(pool):
        return _checksums(pool, block_ids)


def _checksums(pool: torch.Tensor, block_ids: Sequence[int]) -> list[int]:
    from kvledger.cuda.ops import checksum_layout

    word, wpb, row = checksum_layout(_block_bytes(pool))
    chunk = 16 * _SUM_TILE
    chunks = (wpb + chunk - 1) // chunk
    part = torch.empty((len(block_ids), chunks), dtype=torch.int64, device=pool.device)
    for first, ids, n in _id_chunks(block_ids, pool.shape[0], pool.device, chunks):
        _checksum_kernel[(chunks, n)](pool, ids, part, wpb, chunks, first, ROW=row,
                                      WIDE=word is torch.int64, CHUNK=chunk, TILE=_SUM_TILE,
                                      num_warps=4)
    # Wrapping int64 sum of the partials: the reference's exact value.
    return [int(x) for x in part.sum(dim=1).tolist()]
