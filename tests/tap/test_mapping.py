"""The mapping's documentation is its table, and the table is the code (no vLLM needed)."""

from __future__ import annotations

import re
from pathlib import Path

from kvledger.tap import mapping

from .calls import Engine

DOC = Path(mapping.__file__).with_name("MAPPING.md")


def test_the_doc_table_is_the_code_table():
    text = DOC.read_text()
    block = re.search(r"<!-- CALL_MAP:BEGIN[^\n]*-->\n(.*?)\n<!-- CALL_MAP:END -->", text, re.S)
    assert block is not None and block.group(1) == mapping.render_table()
    assert f"(version {mapping.MAPPING_VERSION})" in text.splitlines()[0]


def test_remap_rederives_the_facts_from_the_call_records():
    e = Engine("D", "gen")
    e.d_wait("r1", [1, 2])
    e.d_recvd("r1")
    e.d_finish("r1", [1, 2, 3])
    e.p_prefill("r2", [4])
    e.p_sent("r2", expired=True, reads=1)
    calls = [ev.attrs for ev in e.events if ev.kind in ("vllm.call", "vllm.request_call")]
    facts = [(ev.kind, ev.request_id, ev.attrs) for ev in e.events
             if ev.kind not in ("vllm.call", "vllm.request_call", "ledger.opened")]
    assert mapping.remap(calls) == facts


def test_outcomes_of_vllm_statuses():
    assert mapping.outcome_of("FINISHED_LENGTH_CAPPED") == "ok"
    assert mapping.outcome_of("FINISHED_ABORTED") == "cancelled"
    assert mapping.outcome_of("FINISHED_ERROR") == "failed"
    assert mapping.outcome_of("SOMETHING_NEW") == "failed"
