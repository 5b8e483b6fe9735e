"""The store contract on PostgreSQL: a fresh database per session, a fresh schema per test."""

from __future__ import annotations

import pytest

from tests.ledger.store_contract import StoreContract, pg_database, pg_schema_url  # noqa: F401 - fixture

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(pg_database: str) -> str:  # noqa: F811 - the imported fixture, requested by name
    return pg_schema_url(pg_database)


class TestPostgresStore(StoreContract):
    pass
