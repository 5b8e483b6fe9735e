"""kvledger.ledger: event schema, append-only store, hash chain, projections, detectors."""

from .clock import MonotonicClock, VirtualClock
from .errors import (
    BadLedgerError,
    CorruptLedgerError,
    LedgerError,
    SchemaError,
    SchemaVersionError,
    WriterError,
)
from .events import EVENT_KINDS, SCHEMA_VERSION, Event
from .ledger import Ledger
from .store import EventStore

__all__ = [
    "EVENT_KINDS",
    "SCHEMA_VERSION",
    "BadLedgerError",
    "CorruptLedgerError",
    "Event",
    "EventStore",
    "Ledger",
    "LedgerError",
    "MonotonicClock",
    "SchemaError",
    "SchemaVersionError",
    "VirtualClock",
    "WriterError",
]
