"""kvledger.analytics."""
