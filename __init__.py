"""kvledger: an event-sourced ledger for disaggregated KV-cache transfer."""
__version__ = "0.1.0"
