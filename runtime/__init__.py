"""kvledger.runtime."""
