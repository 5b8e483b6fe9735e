"""``WorkerConfig``: one worker's settings, JSON-serialisable, recorded in ``ledger.opened``.

The detectors and analytics read ``send_slots``, ``recv_slots`` and ``num_blocks`` from the
``ledger.opened`` config dict by those names: keep them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from . import limits

DTYPES = ("float16", "bfloat16", "float32")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    role: str  # "ctx" (prefill, sender) | "gen" (decode, receiver)
    name: str = ""  # stream / agent name; defaults to the role
    peer: str = ""  # the other worker's name
    # KV pool geometry: pool[num_blocks, layers, 2, kv_heads, block_tokens, head_dim].
    num_blocks: int = 1024
    layers: int = 2
    kv_heads: int = 2
    block_tokens: int = 16
    head_dim: int = 32
    dtype: str = "float16"
    # Transfer staging slots (TensorRT-LLM's default is one of each).
    send_slots: int = 1
    recv_slots: int = 1
    max_request_blocks: int = 16  # a slot holds this many blocks
    block_reuse: bool = True  # prefix reuse on ctx (the rc13 configuration)
    poll_at_least: int = 1  # at_least passed to the status polls every step
    # Health: quarantined transfers allowed before the worker says it cannot serve, and how long
    # pending obligations may go without progress before it does.
    quarantine_budget: int = 4
    progress_deadline_ms: int = limits.PROGRESS_DEADLINE_MS_DEFAULT
    # A quarantined transfer stuck this long turns the worker unhealthy (its user was answered
    # when it entered quarantine).
    quarantine_age_ms: int = limits.QUARANTINE_AGE_MS_DEFAULT
    # Admission: requests wait (bounded) for KV blocks and staging slots, each wait at most this
    # long, then they are shed with a recorded reason.
    admission_queue_max: int = limits.ADMISSION_QUEUE_MAX_DEFAULT
    queue_deadline_ms: int = limits.QUEUE_DEADLINE_MS_DEFAULT
    # gen re-sends Abandon after this long without ctx's answer (doubling, capped).
    abandon_retry_ms: int = limits.ABANDON_RETRY_MS_DEFAULT
    # TRT-LLM #13495 style: an in-flight cancel releases the transport handle at once (the slot is
    # then poisoned: quiescence can no longer be observed). Off = cancel means "stop caring".
    release_on_cancel: bool = False
    # Zero-copy (runtime/core/states.py, ZERO_COPY_ACTIONS): ctx WRITEs its KV blocks straight
    # into gen's KV blocks (checksums in place, no pack/unpack); slots are credits without
    # memory that bound the transfers in flight. Both workers of a pair must agree, with the
    # same block layout (``pair_problem``). Off: the staging path, the default.
    zero_copy: bool = False
    # Per-block checksums: ctx's of what it sends, gen's of what landed, compared by gen
    # (``kv.checksum_failed``). Off, the data path moves bytes and reads none of them again,
    # as vLLM's NixlConnector does: the price of checking is two more passes over every byte
    # (the zero-copy mode's gap to NIXL alone, bench_runtime.py). Both workers must agree;
    # the ledger's config says which a run had.
    checksums: bool = True
    policy: str = "hardened"
    seed: int = 0
    # Where KV and slots live: "cpu", or "cuda" / "cuda:N" (NIXL registers VRAM; UCX's CUDA
    # transports move the bytes GPU to GPU; pack/unpack/checksum run as Triton kernels).
    device: str = "cpu"
    # Prometheus metrics of a worker process (runtime/metrics.py) on this port of 127.0.0.1;
    # 0 = off. Not part of the lifecycle: a replay never serves them.
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if self.role not in ("ctx", "gen"):
            raise ValueError(f"role must be ctx or gen, not {self.role!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")
        for f in ("num_blocks", "layers", "kv_heads", "block_tokens", "head_dim",
                  "send_slots", "recv_slots", "max_request_blocks", "progress_deadline_ms",
                  "quarantine_age_ms", "admission_queue_max", "queue_deadline_ms",
                  "abandon_retry_ms"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], not {self.device!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be within 0..65535, not {self.metrics_port}")
        if self.max_request_blocks > self.num_blocks:
            raise ValueError("max_request_blocks must not exceed num_blocks")
        for f in ("zero_copy", "checksums", "block_reuse", "release_on_cancel"):
            if type(getattr(self, f)) is not bool:  # a recorded "false" must not read as on
                raise ValueError(f"{f} must be true or false, not {getattr(self, f)!r}")

    @property
    def stream(self) -> str:
        return self.name or self.role

    @property
    def block_nbytes(self) -> int:
        elems = self.layers * 2 * self.kv_heads * self.block_tokens * self.head_dim
        return elems * DTYPE_BYTES[self.dtype]

    @property
    def slot_nbytes(self) -> int:
        """Bytes of one staging slot (zero-copy: what one would hold; its slots hold none)."""
        return self.max_request_blocks * self.block_nbytes

    @property
    def arena_nbytes(self) -> int:
        """Bytes of the staging arena: a slot each, none in zero-copy mode (credits only)."""
        if self.zero_copy:
            return 0
        return (self.send_slots if self.role == "ctx" else self.recv_slots) * self.slot_nbytes

    @property
    def max_request_tokens(self) -> int:
        return self.max_request_blocks * self.block_tokens

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> WorkerConfig:
        known = {f.name for f in fields(WorkerConfig)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WorkerConfig keys: {sorted(unknown)}")
        return WorkerConfig(**d)


def kv_bytes(cfg: WorkerConfig) -> int:
    """Bytes a worker allocates for its KV pool and its staging slots."""
    return cfg.num_blocks * cfg.block_nbytes + cfg.arena_nbytes


_LAYOUT = ("layers", "kv_heads", "block_tokens", "head_dim", "dtype")


def pair_problem(ctx: WorkerConfig, gen: WorkerConfig) -> str | None:
    """Why a ctx and a gen config cannot work as a pair (one line), or None. Zero-copy writes
    ctx's blocks byte for byte into gen's: both must be in that mode, with one block layout."""
    if ctx.zero_copy != gen.zero_copy:
        return "zero_copy must be on for both workers or for neither"
    if ctx.checksums != gen.checksums:
        return "checksums must be on for both workers or for neither"
    if ctx.zero_copy:
        differ = [f for f in _LAYOUT if getattr(ctx, f) != getattr(gen, f)]
        if differ:
            return (f"zero-copy needs one KV block layout on both sides; {', '.join(differ)} "
                    "differ")
    return None


def memory_budget_bytes(share: float = 0.5) -> int:
    """``share`` of this machine's physical memory (what the workers' KV may take together)."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - not Linux
        total = 1 << 40
    return int(total * share)


def resource_problem(cfgs: list[WorkerConfig], memory_bytes: int) -> str | None:
    """Why these workers cannot run on this machine (one line), or None: their KV memory
    together must fit in ``memory_bytes``, and a CUDA device they name must exist. Checked
    before a run or replay starts, so an impossible configuration (from a flag or a recorded
    trace) is a one-line error instead of a failed allocation."""
    ctxs = [c for c in cfgs if c.role == "ctx"]
    gens = [c for c in cfgs if c.role == "gen"]
    if len(ctxs) == 1 and len(gens) == 1:
        problem = pair_problem(ctxs[0], gens[0])
        if problem is not None:
            return problem
    need = sum(kv_bytes(c) for c in cfgs)
    if need > memory_bytes:
        c = cfgs[0]
        return (f"the workers need {need / 2**30:,.1f} GiB of KV memory ({c.num_blocks} blocks "
                f"of {c.block_nbytes} bytes each, and staging slots) but at most "
                f"{memory_bytes / 2**30:,.1f} GiB may be used here")
    devices = sorted({c.device for c in cfgs if c.device != "cpu"})
    if devices:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for d in devices:
            head, _, idx = d.partition(":")
            if head != "cuda" or (idx and not idx.isdigit()):
                return f"device {d!r} is not cpu, cuda or cuda:N"
            if int(idx or 0) >= count:
                return (f"device {d} is not here (this machine has {count} CUDA devices); "
                        "use cpu")
    return None
