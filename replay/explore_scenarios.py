"""The explorer's bounded scenarios (``kvledger explore --scenario``): data only, so that the
CLI can list them without importing the cores the explorer drives (``replay.explore``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvledger.runtime.config import WorkerConfig

STATES_MAX_DEFAULT = 400_000


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    requests: tuple[str, ...] = ("r1", "r2", "r3")
    prompt_tokens: int = 8  # two blocks of 4 tokens
    cancels: bool = True  # a client cancel at any point, once per request and side
    timeout_ms: int | None = None  # every request's timeout (fires when the clock jumps)
    drops: int = 0  # control messages that may be lost
    reorder: bool = False  # control messages delivered in any order (else FIFO per direction)
    write_err: bool = False  # a WRITE may end in ERR
    kill: bool = False  # a peer may die at any point
    clock: bool = False  # the clock may jump to the next deadline while inputs still come
    ticks_max: int = 3  # ... at most this many times (retries would otherwise go on forever)
    async_driver: bool = False  # packs and unpacks finish later (else at once, as Worker does)
    duplicates: bool = False  # gen may be given a request's arrival twice (a retried init)
    restart: bool = False  # after a death is noticed, the dead side may be restarted
    rejoin_requests: tuple[str, ...] = ()  # arrive (at both sides) only after the restart
    reaped: bool = True  # the supervisor confirms the dead process was reaped (else: it could not)
    # release_on_cancel: a client cancel of a WRITE in flight poisons (in doubt) by design.
    cancel_poisons: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def all_requests(self) -> tuple[str, ...]:
        return self.requests + self.rejoin_requests

    def configs(self, policy: str) -> tuple[WorkerConfig, WorkerConfig]:
        from kvledger.runtime.config import WorkerConfig

        base = dict(num_blocks=8, block_tokens=4, max_request_blocks=2, send_slots=1,
                    recv_slots=1, block_reuse=False, progress_deadline_ms=10**9,
                    quarantine_age_ms=10**9 - 1, policy=policy)
        base.update(self.config)
        ctx = WorkerConfig(role="ctx", name="ctx", peer="gen", **base)
        return ctx, replace(ctx, role="gen", name="gen", peer="ctx")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("storm", "3 requests, one slot a side, a client cancel at any point on either "
             "side: the cancel-storm family (adverts, Abandons and arrivals in every order); "
             "prefix reuse on (the rc13 configuration).", config={"block_reuse": True}),
    Scenario("reorder", "2 requests, one slot a side, cancels anywhere, control messages "
             "delivered in any order.", requests=("r1", "r2"), reorder=True),
    Scenario("async", "2 requests, two slots a side, cancels anywhere, packs and unpacks "
             "finishing late (an asynchronous driver).", requests=("r1", "r2"),
             async_driver=True, config={"send_slots": 2, "recv_slots": 2}),
    Scenario("dup", "2 requests, gen given an arrival twice (a retried init), anywhere.",
             requests=("r1", "r2"), cancels=False, duplicates=True),
    Scenario("queue", "3 requests, KV room for one at a time on each side and one queue place "
             "(the admission queue fills and sheds), queue deadlines firing anywhere (two "
             "clock jumps).", cancels=False, clock=True, ticks_max=2,
             config={"num_blocks": 2, "queue_deadline_ms": 20, "admission_queue_max": 1}),
    Scenario("loss", "2 requests with timeouts, one slot a side: any one control message lost, "
             "timeouts and Abandon retries firing anywhere (three clock jumps).",
             requests=("r1", "r2"), cancels=False, timeout_ms=50, drops=1, clock=True,
             config={"abandon_retry_ms": 10}),
    Scenario("faults", "2 requests with timeouts, one slot a side: WRITEs failing, timeouts "
             "firing anywhere (three clock jumps).", requests=("r1", "r2"), cancels=False,
             timeout_ms=50, write_err=True, clock=True, config={"abandon_retry_ms": 10}),
    Scenario("death", "2 requests, one slot a side, cancels anywhere, either peer dying at any "
             "point (the survivor notices later).", requests=("r1", "r2"), kill=True),
    Scenario("restart", "1 request, one slot a side, cancels anywhere, either peer dying at any "
             "point; once the survivor noticed, the dead one is reaped and restarted (a new "
             "incarnation: fresh core, new stream) and the survivor told it rejoined; then a "
             "second request, which must complete.", requests=("r1",),
             rejoin_requests=("r2",), kill=True, restart=True),
)}
# Zero-copy (WRITEs from KV blocks into KV blocks; a slot is a credit): the same scenarios where
# the memory a WRITE touches matters (cancels, asynchronous checksums, failures, deaths,
# restarts), plus in-flight cancels that release the handle (release_on_cancel), whose blocks
# must be poisoned on both sides.
ZERO_COPY_OF = ("storm", "async", "faults", "death", "restart")
SCENARIOS.update({f"zc_{n}": replace(
    SCENARIOS[n], name=f"zc_{n}", doc="Zero-copy: " + SCENARIOS[n].doc,
    config={**SCENARIOS[n].config, "zero_copy": True}) for n in ZERO_COPY_OF})
SCENARIOS["zc_release"] = Scenario(
    "zc_release", "Zero-copy, 2 requests, two credits a side, cancels anywhere, an in-flight "
    "cancel releasing the handle at once (release_on_cancel): the WRITE is in doubt, so both "
    "sides poison the request's blocks (and its credit); the other request still completes.",
    requests=("r1", "r2"), cancel_poisons=True,
    config={"zero_copy": True, "release_on_cancel": True, "send_slots": 2, "recv_slots": 2})
