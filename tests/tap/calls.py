"""vLLM-shaped ledgers without vLLM: connector call records in the shapes the tap writes, passed
through the real mapping (``tap.mapping.Mapper``), as a stream of Events. The detector tests and the
Python/SQL parity tests build their ledgers here; tests/tap/test_vllm_*.py check the same shapes
against real vLLM."""

from __future__ import annotations

import random
from typing import Any

from kvledger.ledger.events import SCHEMA_VERSION, Event, validate
from kvledger.tap.mapping import MAPPING_VERSION, Mapper

S = 1_000_000_000
MS = 1_000_000


class Engine:
    """One vLLM process's stream (scheduler and worker side in one process, TP=1)."""

    def __init__(self, name: str, role: str, t0: int = S, step_ns: int = MS) -> None:
        self.name = name
        self.events: list[Event] = []
        self.mapper = Mapper()
        self.ts = t0
        self.step_ns = step_ns
        self.emit("ledger.opened", None, schema_version=SCHEMA_VERSION, role=role,
                  wall_ns=1_700_000_000 * S,
                  config={"tap_mapping_version": MAPPING_VERSION, "num_blocks": 64})

    def emit(self, kind: str, rid: str | None, **attrs: Any) -> Event:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        validate(kind, rid, attrs)
        self.ts += self.step_ns
        ev = Event(self.name, len(self.events) + 1, self.ts, kind, rid, attrs)
        self.events.append(ev)
        return ev

    def wait(self, ns: int) -> None:
        self.ts += ns

    def close(self) -> None:
        self.emit("ledger.closed", None, events=len(self.events) + 1)

    def call(self, side: str, method: str, args: dict[str, Any], result: Any = None,
             observed: dict[str, Any] | None = None) -> None:
        req = args.get("request")
        rid = req["request_id"] if isinstance(req, dict) else None
        self.emit("vllm.request_call" if rid else "vllm.call", rid, method=method, side=side,
                  args=args, result={"value": result}, dur_ns=1000, observed=observed)
        for kind, erid, attrs in self.mapper.on_call(side, method, args, result, observed):
            self.emit(kind, erid, **attrs)

    # -- the request lifecycles, as the scheduler and the worker call the connector --------------
    @staticmethod
    def req(rid: str, status: str = "WAITING", params: dict | None = None) -> dict[str, Any]:
        return {"request_id": rid, "status": status, "num_prompt_tokens": 64,
                "num_computed_tokens": 0, "kv_transfer_params": params}

    def p_prefill(self, rid: str, blocks: list[int], delay_free: bool = True) -> None:
        """Producer: the request arrives, is prefilled and finishes (length capped)."""
        params = {"do_remote_decode": True}
        self.call("scheduler", "on_new_request", {"request": self.req(rid, params=params)})
        self.call("scheduler", "get_num_new_matched_tokens",
                  {"request": self.req(rid, params=params), "num_computed_tokens": 0}, [0, False])
        self.call("scheduler", "update_state_after_alloc",
                  {"request": self.req(rid, params=params), "blocks": [blocks],
                   "num_external_tokens": 0})
        self.call("scheduler", "request_finished_all_groups",
                  {"request": self.req(rid, "FINISHED_LENGTH_CAPPED", params),
                   "block_ids": [blocks]},
                  [delay_free, {"remote_block_ids": [blocks]} if delay_free else None])

    def p_sent(self, rid: str, *, expired: bool = False, reads: int = 0) -> None:
        """Producer: the worker reports the send done (or the lease expired), the scheduler
        frees."""
        self.call("worker", "get_transfer_results", {"finished_req_ids": []},
                  {"finished_sending": [rid], "finished_recving": []},
                  {"lease_expired": {rid: reads}} if expired else None)
        self.call("scheduler", "update_connector_output",
                  {"connector_output": {"finished_sending": [rid]}})

    def d_wait(self, rid: str, blocks: list[int], peer: str = "P") -> None:
        """Consumer: the request arrives with remote KV to load; blocks allocated for it."""
        params = {"do_remote_prefill": True, "remote_engine_id": peer}
        self.call("scheduler", "on_new_request", {"request": self.req(rid, params=params)})
        self.call("scheduler", "get_num_new_matched_tokens",
                  {"request": self.req(rid, params=params), "num_computed_tokens": 0},
                  [64, True])
        if blocks:
            self.call("scheduler", "update_state_after_alloc",
                      {"request": self.req(rid, "WAITING_FOR_REMOTE_KVS", params),
                       "blocks": [blocks], "num_external_tokens": 64})

    def d_recvd(self, rid: str, *, failed: bool = False) -> None:
        self.call("worker", "get_transfer_results", {"finished_req_ids": []},
                  {"finished_sending": [], "finished_recving": [rid],
                   "failed_recving": [rid] if failed else []})
        self.call("scheduler", "update_connector_output",
                  {"connector_output": {"finished_recving": [rid],
                                        "failed_recving": [rid] if failed else []}})

    def d_finish(self, rid: str, blocks: list[int], *, status: str = "FINISHED_LENGTH_CAPPED",
                 delay_free: bool = False) -> None:
        self.call("scheduler", "request_finished_all_groups",
                  {"request": self.req(rid, status), "block_ids": [blocks]}, [delay_free, None])

    def invalid(self, blocks: list[int]) -> None:
        self.call("worker", "get_block_ids_with_load_errors", {}, blocks)
        self.call("scheduler", "update_connector_output",
                  {"connector_output": {"invalid_block_ids": blocks}})


def random_engine(seed: int, name: str, n: int = 6) -> Engine:
    """A random mix of vLLM request lifecycles, healthy and faulty, on one stream."""
    rng = random.Random(seed)
    e = Engine(name, rng.choice(["ctx", "gen"]))
    free = list(range(1, 64))
    rng.shuffle(free)
    for i in range(n):
        rid = f"{name}-r{i}"
        blocks = [free.pop() for _ in range(rng.randint(1, 3))] if rng.random() < 0.9 else []
        shape = rng.choice(["p_ok", "p_lost", "p_expired", "d_ok", "d_abort", "d_stuck",
                            "d_failed", "d_reuse"])
        if shape.startswith("p_"):
            e.p_prefill(rid, blocks, delay_free=rng.random() < 0.9)
            if shape == "p_ok":
                e.p_sent(rid)
            elif shape == "p_expired":
                e.wait(rng.choice([S, 40 * S]))
                e.p_sent(rid, expired=True, reads=rng.randint(0, 1))
        else:
            e.d_wait(rid, blocks)
            if shape == "d_ok":
                e.d_recvd(rid)
                e.d_finish(rid, blocks)
            elif shape == "d_abort":
                e.d_finish(rid, blocks, status="FINISHED_ABORTED", delay_free=True)
                if rng.random() < 0.5:
                    e.d_recvd(rid)
            elif shape == "d_failed":
                e.d_recvd(rid, failed=True)
                e.d_finish(rid, blocks, status="FINISHED_ERROR")
            elif shape == "d_reuse" and blocks:
                e.invalid(blocks[:1])
                e.d_finish(rid, blocks, status="FINISHED_ERROR")  # freed, load not ended
                e.d_wait(rid + "b", blocks[:1])  # the invalid block given to the next request
        if rng.random() < 0.3:
            e.wait(rng.choice([S, 70 * S]))
    if rng.random() < 0.5:
        e.close()
    return e
