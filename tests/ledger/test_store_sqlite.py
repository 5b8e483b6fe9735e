"""The store contract on SQLite (WAL, synchronous=FULL): a fresh file per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ledger.store_contract import StoreContract  # noqa: F401 - collected through the subclass


@pytest.fixture
def url(tmp_path: Path) -> str:
    return str(tmp_path / "worker.sqlite")


class TestSqliteStore(StoreContract):
    pass
