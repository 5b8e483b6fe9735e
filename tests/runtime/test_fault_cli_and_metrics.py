"""Chaos from the CLI (``kvledger run --fault``: what each spec maps onto, and bad specs are a
usage error) and a worker's Prometheus metrics (a real core, a real HTTP server, scraped)."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from kvledger.cli import main
from kvledger.runtime.faults import CLIENT, FaultSpecError, parse_fault_spec
from kvledger.runtime.metrics import WorkerCollector, serve, snapshot
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


# --- --fault --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, injector, fields", [
    # stall and kill: the victim's peer stops or kills it (its wrapper knows the victim's pid)
    ("stall:ctx,at=200ms,for=50ms", "gen",
     {"kind": "stall", "at_ns": 200_000_000, "delay_ms": 50.0, "target": None}),
    ("kill:gen,at=1.5s", "ctx", {"kind": "kill", "at_ns": 1_500_000_000, "count": 1}),
    ("stall:gen,how=silent,for=300us", "gen", {"target": "self", "delay_ms": 0.3}),
    # drop: injected where the message is sent; by type, request and count
    ("drop,msg=Abandon,count=0", "gen", {"kind": "drop", "msg_type": "Abandon", "count": 0}),
    ("drop,msg=ReadySignal,req=r00007", "ctx", {"request_id": "r00007"}),
    ("drop:gen", "gen", {"msg_type": None}),
    # delay and fail: WRITEs (ctx's)
    ("delay,req=r00003,for=80", "ctx", {"kind": "delay", "msg_type": "write", "delay_ms": 80.0}),
    ("fail,at=2s,count=3", "ctx", {"kind": "fail", "at_ns": 2_000_000_000, "count": 3}),
    # the client reaching a worker late (the load driver's, not a wrapper's)
    ("delay:ctx,msg=client,for=10ms", "ctx", {"msg_type": CLIENT, "delay_ms": 10.0}),
])
def test_fault_specs_map_onto_the_wrapper_that_injects_them(spec, injector, fields):
    got = parse_fault_spec(spec)
    assert got.injector == injector and got.text == spec
    assert {k: getattr(got.fault, k) for k in fields} == fields
    assert got.client_lag_ns == (10_000_000 if CLIENT in spec else 0)


@pytest.mark.parametrize("spec, worker, at_ns, down_ns", [
    ("restart:gen", "gen", 0, 0),
    ("restart:gen,at=150ms", "gen", 150_000_000, 0),
    ("restart:ctx,at=1.5s,for=300ms", "ctx", 1_500_000_000, 300_000_000),
    ("restart:gen,for=250us", "gen", 0, 250_000),
])
def test_restart_specs_are_the_supervisors(spec, worker, at_ns, down_ns):
    got = parse_fault_spec(spec)
    assert got.injector == "supervisor" and got.fault is None and got.client_lag_ns == 0
    r = got.restart
    assert (r.worker, r.at_ns, r.down_ns) == (worker, at_ns, down_ns)


def test_the_help_names_restart():
    from kvledger.runtime.faults import FAULT_SPEC_HELP

    assert "restart (the supervisor SIGKILLs WORKER" in FAULT_SPEC_HELP
    assert "restart:gen,at=150ms,for=100ms" in FAULT_SPEC_HELP


@pytest.mark.parametrize("spec, says", [
    ("boom", "unknown kind"),
    ("kill", "which worker"),
    ("kill:both", "ctx or gen"),
    ("stall:ctx", "needs for="),
    ("delay", "needs for="),
    ("drop,msg=Nope", "is not one of"),
    ("drop:ctx,msg=Abandon", "sent by gen"),
    ("fail:gen", "only ctx sends WRITEs"),
    ("delay,msg=Advertise,for=1ms", "WRITEs only"),
    ("stall:ctx,for=soon", "not a duration"),
    ("kill:gen,count=-1", "whole number"),
    ("kill:gen,at=1s,at=2s", "given twice"),
    ("drop,oops", "KEY=VALUE"),
    ("kill:gen,how=silent", "only for a stall"),
    ("delay:ctx,msg=client", "msg=client is"),
    # restart: the supervisor's; a worker, at= and for= only, durations
    ("restart", "which worker to restart"),
    ("restart:both", "ctx or gen"),
    ("restart:gen,count=2", "at= and for= only"),
    ("restart:gen,msg=write", "at= and for= only"),
    ("restart:ctx,how=silent", "at= and for= only"),
    ("restart:gen,req=r1", "at= and for= only"),
    ("restart:gen,at=soon", "not a duration"),
    ("restart:gen,for=-1s", "not a duration"),
    ("restart:gen,for=", "KEY=VALUE"),
    ("restart:gen,at=1s,at=2s", "given twice"),
])
def test_bad_fault_specs_say_why(spec, says):
    with pytest.raises(FaultSpecError, match=says):
        parse_fault_spec(spec)


@pytest.mark.parametrize("argv", [
    ["--fault", "stall:ctx"],
    ["--fault", "kill:gen,at=1s", "--inprocess"],
    ["--metrics-port", "9400", "--inprocess"],
    ["--metrics-port", "70000"],
    ["--progress-deadline-ms", "0"],
    ["--fault", "restart:gen,at=1s", "--inprocess"],
    ["--fault", "restart:gen,count=1"],
    ["--fault", "restart:ctx,for=later"],
    ["--fault", "restart"],
])
def test_bad_run_options_are_a_usage_error_and_start_nothing(argv, tmp_path, capsys):
    assert main(["run", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o").exists()


# --- metrics --------------------------------------------------------------------------------------
def _wedged_gen(out):
    """A real gen core (in-process loopback pair) whose only receive slot is held by r1 (its
    WRITE held in flight) while r2 waits for it."""
    from kvledger.runtime.inprocess import Pair, loopback_pair, pair_configs
    from kvledger.runtime.workload import RequestSpec

    ctx_cfg, gen_cfg = pair_configs(recv_slots=1, progress_deadline_ms=5)
    ctx_t, gen_t = loopback_pair(latency_ticks=0)
    ctx_t.hold_new = True
    pair = Pair(ctx_cfg, gen_cfg, ctx_t, gen_t, str(out))
    for rid in ("r1", "r2"):
        pair.submit(RequestSpec(rid, pair.now(), 40, -1, 0, 7, None))
        for _ in range(20):
            pair.step()
            pair.advance(10_000)
    return pair


def test_snapshot_reads_a_wedged_core(tmp_path):
    pair = _wedged_gen(tmp_path)
    core = pair.gen.core
    now = pair.now()
    s = snapshot(core, now)
    assert s["slots"]["held"] == 1 and s["queue_depth"] == 1 and s["pool"] == "recv"
    assert s["live_requests"] == 2 and s["quarantined"] == 0
    later = snapshot(core, now + 2_000_000_000)
    assert later["oldest_wait_s"] == pytest.approx(s["oldest_wait_s"] + 2.0)
    assert later["oldest_obligation_s"] >= later["oldest_wait_s"] > 0


def test_a_scrape_sees_health_and_the_growing_wait(tmp_path):
    pair = _wedged_gen(tmp_path)
    for _ in range(20):  # no progress for past the 5 ms deadline: the core says so itself
        pair.step()
        pair.advance(1_000_000)
    clock = {"now": pair.now()}
    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(pair.gen.core, "gen", "gen", lambda: clock["now"]))

    def scrape() -> dict[str, float]:
        fams = text_string_to_metric_families(generate_latest(reg).decode())
        return {s.name + str(sorted(s.labels.items())): s.value for f in fams for s in f.samples}

    first = scrape()
    clock["now"] += 1_500_000_000
    second = scrape()
    key = "kvledger_oldest_wait_age_seconds[('role', 'gen'), ('stream', 'gen')]"
    assert second[key] - first[key] == pytest.approx(1.5)
    assert first["kvledger_worker_healthy[('role', 'gen'), ('stream', 'gen')]"] == 0.0
    reason = [k for k in first if k.startswith("kvledger_worker_health_info")]
    assert len(reason) == 1 and "no progress" in reason[0]


def test_serve_answers_over_http_and_a_taken_port_does_not_stop_the_worker(tmp_path):
    pair = _wedged_gen(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve(pair.gen.core, "gen", "gen", pair.now, port)
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'kvledger_queue_depth{queue="slot_wait",role="gen",stream="gen"} 1.0' in text
        assert serve(pair.gen.core, "gen", "gen", pair.now, port) is None  # taken: logged
    finally:
        server.shutdown()
        server.server_close()
