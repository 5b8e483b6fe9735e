"""The store contract on PostgreSQL: a fresh database per session, a fresh schema per test."""

from __future__ import annotations

import pytest
from kvledger.ledger.mapper import GENESIS_HASH, encode_row
from kvledger.ledger.store import EventStore

from tests.ledger.store_contract import StoreContract, pg_database, pg_schema_url  # noqa: F401 - fixture

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(pg_database: str) -> str:  # noqa: F811 - the imported fixture, requested by name
    return pg_schema_url(pg_database)


class TestPostgresStore(StoreContract):
    pass


def _payload_storage(url: str) -> tuple[str, list]:
    store = EventStore(url, create=False)
    try:
        with store.engine.connect() as conn:
            storage = conn.exec_driver_sql(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'event_groups'::regclass "
                "AND attname = 'payload'").scalar()
            methods = [r[0] for r in conn.exec_driver_sql(
                "SELECT pg_column_compression(payload) FROM event_groups")]
    finally:
        store.close()
    return storage, methods


def _compressible_group(stream: str, n: int) -> list[tuple]:
    rows, prev = [], GENESIS_HASH
    for i in range(n):
        row = encode_row(stream, i + 1, i, "xfer.polled", "req-1",
                         {"handle": 7, "state": "PROC", "polls": 3}, prev)
        prev = row[-1]
        rows.append(row)
    return rows


def test_payloads_are_stored_uncompressed(url: str) -> None:
    # pglz over an Arrow batch of hashes saves little and was most of the server's CPU per
    # append: payloads are stored out of line, uncompressed, and come back byte-exact.
    store = EventStore(url)
    rows = _compressible_group("s", 3000)
    store.append(rows)
    got = [tuple(r[k] for k in ("seq", "ts_ns", "kind", "request_id", "attrs", "prev_hash",
                               "hash")) for r in store.rows()]
    store.close()
    assert got == [r[1:] for r in rows]
    storage, methods = _payload_storage(url)
    assert storage == "e"
    assert methods == [None]


def test_a_ledger_made_compressed_is_switched_on_open(url: str) -> None:
    EventStore(url).close()
    store = EventStore(url, create=False)
    with store.engine.begin() as conn:  # as a ledger made before this change was
        conn.exec_driver_sql("ALTER TABLE event_groups ALTER COLUMN payload SET STORAGE EXTENDED")
    store.close()
    assert _payload_storage(url)[0] == "x"
    EventStore(url, create=False).close()  # a reader changes nothing
    assert _payload_storage(url)[0] == "x"
    store = EventStore(url)  # a writer's open switches it
    store.append(_compressible_group("s", 3000))
    store.close()
    assert _payload_storage(url) == ("e", [None])
