"""Errors of the ledger package, named by whose fault they are."""

from __future__ import annotations

from .events import SchemaError


class LedgerError(Exception):
    """Base class: anything wrong with a ledger or its use."""


class BadLedgerError(LedgerError):
    """The input is not a usable ledger (unreadable, truncated, wrong format)."""


class SchemaVersionError(BadLedgerError):
    """The ledger was written by a newer schema than this build understands."""


class CorruptLedgerError(BadLedgerError):
    """Corruption in the middle of a stream: gap, broken chain, altered row. Never repaired."""


class AppendConflictError(LedgerError):
    """An append hit existing ``(stream, seq)`` rows: a second writer on the same stream."""


class WriterError(LedgerError):
    """The background writer failed; the events after the last flush are not durable."""


__all__ = [
    "AppendConflictError",
    "BadLedgerError",
    "CorruptLedgerError",
    "LedgerError",
    "SchemaError",
    "SchemaVersionError",
    "WriterError",
]
